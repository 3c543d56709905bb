"""Train the default model (seeded, reproducible): see docs/default-model.md.

    python examples/train_default_model.py --out zf_cifar10.pt [--epochs 15] [--data DIR]

Reads CIFAR-10 from the JPEG zips (train.zip, test.zip) in DIR, or where
captum_deconvviz.data.find_cifar10() finds them ($DECONVVIZ_CIFAR10, or
shared/data/cifar10 next to the working directory).
"""

from captum_deconvviz.zoo.train import main

if __name__ == "__main__":
    main()
