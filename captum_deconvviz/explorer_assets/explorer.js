/* The explorer's script: plain JavaScript, no framework, no network.
 *
 * It reads the JSON in <script id="explorer-data"> (numbers and strings only) and draws
 * every view from it with DOM calls. Strings from the model, the files or the classes are
 * only ever set as textContent (or as a URL fragment through encodeURIComponent), never
 * parsed as HTML. Images are cells of sheet files, shown as CSS backgrounds: a sheet is
 * fetched only when a cell of it is on screen.
 *
 * Addresses: #LAYER (its channel table), #LAYER/CHANNEL (a channel), #:VIEW (a lecture view),
 * with LAYER through encodeURIComponent ("features.7" stays as it is).
 */
(function () {
  "use strict";

  var DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  var content = document.getElementById("content");
  var staticViews = document.getElementById("static");
  var search = document.getElementById("search");
  var byName = Object.create(null);
  DATA.layers.forEach(function (layer, i) { layer.position = i; byName[layer.name] = layer; });
  var table = { layer: null, key: "channel", dir: 1, show: "all", cls: -1, order: [], cursor: -1 };
  var page = { layer: null, channel: -1, kind: "top", record: -1, overlay: "blended" };
  var ROW_BATCH = 200;  // table rows drawn at once
  var OVERLAYS = [["none", "none"], ["heat_map", "heat map"], ["blended", "blended"], ["masked", "masked"]];

  // ---- small helpers ----------------------------------------------------------------
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) {
      if (arguments[i]) { parent.appendChild(arguments[i]); }
    }
    return parent;
  }
  function link(text, hash, cls) {
    var a = el("a", cls, text);
    a.href = hash;
    return a;
  }
  function layerHash(layer) { return "#" + encodeURIComponent(layer.name); }
  function channelHash(layer, channel) { return layerHash(layer) + "/" + channel; }
  function fmt(value, digits) {
    if (value === null || value === undefined) { return "–"; }
    var text = Number(value).toPrecision(digits || 3);
    if (text.indexOf("e") < 0 && text.indexOf(".") >= 0) { text = text.replace(/\.?0+$/, ""); }
    return text;
  }
  function className(index) {
    return DATA.class_names && index >= 0 && index < DATA.class_names.length ? DATA.class_names[index] : String(index);
  }
  function imageLabel(slot) {
    var images = DATA.images;
    var label = images.labels ? images.labels[slot] : null;
    return (label !== null && label !== undefined ? label : "image") + " (#" + images.index[slot] + ")";
  }

  /* One cell of a sheet as a div: row `row`, column `col` of `sheets`, drawn `scale` times. */
  function cell(sheets, files, row, col, scale, label) {
    var h = sheets.cell[0], w = sheets.cell[1];
    var group = Math.floor(row / sheets.per_sheet), inner = row % sheets.per_sheet;
    var node = el("div", "sprite");
    node.style.width = w * scale + "px";
    node.style.height = h * scale + "px";
    node.style.backgroundImage = "url(\"" + files[group] + "\")";
    node.style.backgroundSize = sheets.cols * w * scale + "px auto";
    node.style.backgroundPosition = -col * w * scale + "px " + -inner * h * scale + "px";
    node.setAttribute("role", "img");
    if (label) { node.setAttribute("aria-label", label); }
    return node;
  }
  function cellScale(size, target) { return Math.max(0.25, Math.min(12, target / Math.max(size[0], size[1]))); }

  // ---- the side bar -------------------------------------------------------------------
  function buildSide() {
    var list = document.getElementById("layers");
    DATA.layers.forEach(function (layer) {
      var item = el("li");
      item.setAttribute("data-layer", layer.name);
      var a = link(layer.name, layerHash(layer));
      add(a, el("span", null, " " + layer.channels));
      add(list, add(item, a));
    });
    var views = document.getElementById("views");
    add(views, add(el("li"), link("Overview", "#")));
    DATA.views.forEach(function (view) { add(views, add(el("li"), link(view.title, "#:" + view.id))); });
    var home = document.getElementById("home");
    home.textContent = DATA.title;
    document.title = DATA.title;
  }
  function markSide(hash) {
    var links = document.querySelectorAll("#side a");
    for (var i = 0; i < links.length; i++) {
      links[i].classList.toggle("current", links[i].getAttribute("href") === hash);
    }
  }
  function filterSide(query) {
    var q = query.toLowerCase().split("/")[0];
    var items = document.querySelectorAll("#layers li");
    for (var i = 0; i < items.length; i++) {
      items[i].hidden = q !== "" && items[i].getAttribute("data-layer").toLowerCase().indexOf(q) < 0;
    }
  }

  // ---- views --------------------------------------------------------------------------
  function show(node, hash) {
    staticViews.hidden = true;
    content.hidden = false;
    content.textContent = "";
    add(content, node);
    markSide(hash);
  }

  function overview() {
    var root = el("div");
    add(root, el("h1", null, DATA.title));
    add(root, el("p", null, "Model " + DATA.model + " · data " + (DATA.data || DATA.num_images + " images") + " · " +
      DATA.num_images + " images of " + DATA.input.join("x") + " · top-" + DATA.k +
      (DATA.bottom_k ? " and bottom-" + DATA.bottom_k : "")));
    var t = el("table");
    var head = add(el("tr"), el("th", null, "layer"), el("th", "num", "channels"), el("th", "num", "dead"),
      el("th", "num", "receptive field"), el("th", "num", "stride"));
    add(t, add(el("thead"), head));
    var body = el("tbody");
    DATA.layers.forEach(function (layer) {
      var dead = layer.stats.dead.reduce(function (a, b) { return a + b; }, 0);
      var f = layer.field;
      add(body, add(el("tr"), add(el("td"), link(layer.name, layerHash(layer))), el("td", "num", layer.channels),
        el("td", "num", dead), el("td", "num", f ? f.size.join("x") : "?"), el("td", "num", f ? f.stride.join("x") : "?")));
    });
    add(root, add(t, body));
    var views = el("p", null, "Views: ");
    DATA.views.forEach(function (view, i) {
      if (i) { add(views, document.createTextNode(" · ")); }
      add(views, link(view.title, "#:" + view.id));
    });
    add(root, views);
    add(root, el("pre", null, DATA.command));
    show(root, "#");
  }

  function staticView(id) {
    var sections = staticViews.querySelectorAll("section.view");
    var found = false;
    for (var i = 0; i < sections.length; i++) {
      var on = sections[i].id === "view-" + id;
      sections[i].hidden = !on;
      found = found || on;
    }
    if (!found) { return missing("#:" + id); }
    var images = document.querySelectorAll("#view-" + id + " img[data-src]");
    for (var j = 0; j < images.length; j++) {
      images[j].src = images[j].getAttribute("data-src");
      images[j].removeAttribute("data-src");
    }
    content.hidden = true;
    staticViews.hidden = false;
    markSide("#:" + id);
    window.scrollTo(0, 0);
  }

  function missing(hash) {
    var root = el("div");
    add(root, el("h1", "error", "Nothing here"));
    add(root, el("p", null, "The address " + decodeSafe(hash) + " names no layer, channel or view of this explorer."));
    add(root, link("Back to the overview", "#"));
    show(root, "");
  }

  // ---- the channel table --------------------------------------------------------------
  function columns(layer) {
    var s = layer.stats, cols = [
      { key: "channel", title: "channel", value: function (c) { return c; } },
      { key: "max", title: "max", value: function (c) { return s.max[c]; } },
      { key: "mean", title: "mean", value: function (c) { return s.mean[c]; } },
      { key: "active", title: "fraction active", value: function (c) { return s.active[c]; } },
      { key: "dead", title: "dead", value: function (c) { return s.dead[c]; }, text: function (c) { return s.dead[c] ? "dead" : ""; } }
    ];
    if (layer.classes) {
      var k = layer.classes;
      cols.push({ key: "selectivity", title: "selectivity", value: function (c) { return k.selectivity[c]; } });
      cols.push({ key: "top_class", title: "top class (mean)", value: function (c) { return k.top_class[c]; },
        text: function (c) { return className(k.top_class[c]); } });
    }
    if (layer.agreement) {
      var g = layer.agreement;
      cols.push({ key: "spearman", title: "DeconvNet/GBP ρ", value: function (c) { return g.spearman[c]; } });
      cols.push({ key: "ssim", title: "DeconvNet/GBP SSIM", value: function (c) { return g.ssim[c]; } });
    }
    return cols;
  }

  function tableOrder(layer) {
    var cols = columns(layer), col = cols[0];
    cols.forEach(function (c) { if (c.key === table.key) { col = c; } });
    var order = [];
    for (var c = 0; c < layer.channels; c++) {
      if (table.show === "alive" && layer.stats.dead[c]) { continue; }
      if (table.show === "dead" && !layer.stats.dead[c]) { continue; }
      if (table.cls >= 0 && layer.classes && layer.classes.top_class[c] !== table.cls) { continue; }
      order.push(c);
    }
    order.sort(function (a, b) {
      var x = col.value(a), y = col.value(b);
      if (x === null || x === undefined) { return (y === null || y === undefined) ? a - b : 1; }  // no value: last
      if (y === null || y === undefined) { return -1; }
      return x === y ? a - b : (x < y ? -table.dir : table.dir);
    });
    return order;
  }

  function layerTable(layer, keepCursor) {
    if (table.layer !== layer) {
      table = { layer: layer, key: table.key, dir: table.dir, show: table.show, cls: -1, order: [], cursor: -1 };
      if (!columns(layer).some(function (c) { return c.key === table.key; })) { table.key = "channel"; table.dir = 1; }
    }
    var cols = columns(layer);
    var root = el("div");
    var f = layer.field;
    add(root, el("h1", null, layer.name));
    add(root, el("p", "note", layer.channels + " channels" + (f ? " · receptive field " + f.size.join("x") +
      " px, stride " + f.stride.join("x") : " · no receptive field known: no patches") +
      " · click a column to sort it, a row (or ↑↓ and Enter) to open the channel"));
    var controls = el("div", "controls");
    var which = el("select");
    which.id = "show";
    [["all", "all channels"], ["alive", "alive only"], ["dead", "dead only"]].forEach(function (o) {
      var option = el("option", null, o[1]);
      option.value = o[0];
      add(which, option);
    });
    which.value = table.show;
    which.addEventListener("change", function () { table.show = which.value; layerTable(layer); });
    add(controls, add(el("label", null, "Show "), which));
    if (layer.classes && DATA.class_names) {
      var cls = el("select");
      cls.id = "top-class";
      var any = el("option", null, "any");
      any.value = "-1";
      add(cls, any);
      DATA.class_names.forEach(function (name, i) {
        var option = el("option", null, name);
        option.value = String(i);
        add(cls, option);
      });
      cls.value = String(table.cls);
      cls.addEventListener("change", function () { table.cls = Number(cls.value); layerTable(layer); });
      add(controls, add(el("label", null, "Top class "), cls));
    }
    table.order = tableOrder(layer);
    add(controls, el("span", "note", table.order.length + " shown"));
    add(root, controls);

    var t = el("table");
    t.id = "channels";
    var head = add(el("tr"), el("th", null, "top-1"));
    cols.forEach(function (c) {
      var button = el("button", c.key === table.key ? "sorted" + (table.dir < 0 ? " desc" : "") : "", c.title);
      button.setAttribute("data-key", c.key);
      button.addEventListener("click", function () {
        if (table.key === c.key) { table.dir = -table.dir; } else { table.key = c.key; table.dir = c.key === "channel" ? 1 : -1; }
        layerTable(layer);
      });
      add(head, add(el("th", c.key === "dead" || c.key === "top_class" ? null : "num"), button));
    });
    add(t, add(el("thead"), head));
    var body = el("tbody");
    var thumbs = layer.thumbs, scale = thumbs ? cellScale(thumbs.cell, 28) : 1;
    function makeRow(c, i) {
      var row = el("tr", layer.stats.dead[c] ? "dead" : "");
      row.setAttribute("data-channel", String(c));
      row.setAttribute("data-row", String(i));
      var thumb = el("td");
      if (thumbs) { add(thumb, cell(thumbs, thumbs.files, Math.floor(c / thumbs.cols), c % thumbs.cols, scale)); }
      add(row, thumb);
      cols.forEach(function (col) {
        var td;
        if (col.key === "channel") {
          td = add(el("td", "num"), link(String(c), channelHash(layer, c)));
        } else {
          td = el("td", col.key === "dead" || col.key === "top_class" ? null : "num",
            col.text ? col.text(c) : fmt(col.value(c), 4));
        }
        add(row, td);
      });
      return row;
    }
    // The first rows now, the rest in batches after the first paint: a 2,000-channel layer stays
    // responsive. data-complete marks the table once every row is there.
    var token = table.render = {};
    function addRows(from) {
      if (table.render !== token) { return; }  // another table was drawn since
      var rows = document.createDocumentFragment(), end = Math.min(table.order.length, from + ROW_BATCH);
      for (var i = from; i < end; i++) { rows.appendChild(makeRow(table.order[i], i)); }
      body.appendChild(rows);
      if (end < table.order.length) { setTimeout(function () { addRows(end); }, 0); } else { t.setAttribute("data-complete", ""); }
    }
    addRows(0);
    body.addEventListener("click", function (event) {
      var row = event.target.closest("tr");
      if (row && event.target.tagName !== "A") { location.hash = channelHash(layer, row.getAttribute("data-channel")); }
    });
    add(root, add(t, body));
    show(root, layerHash(layer));
    if (keepCursor !== false && table.cursor >= 0) { moveCursor(0); }
  }

  function moveCursor(step) {
    var rows = content.querySelectorAll("#channels tbody tr");  // the rows drawn so far
    if (!rows.length) { return; }
    var old = content.querySelector("tr.cursor");
    if (old) { old.classList.remove("cursor"); }
    table.cursor = Math.max(0, Math.min(rows.length - 1, table.cursor + step));
    rows[table.cursor].classList.add("cursor");
    rows[table.cursor].scrollIntoView({ block: "nearest" });
  }

  // ---- a channel ----------------------------------------------------------------------
  function histogram(layer, channel) {
    var counts = layer.classes.histogram[channel];
    var most = Math.max.apply(null, counts.concat([1]));
    var grid = el("div", "hist");
    counts.forEach(function (n, i) {
      var top = i === layer.classes.top_class[channel] ? "top" : "";
      var bar = el("div", "bar");
      bar.style.width = (100 * n / most) + "%";
      add(grid, el("span", top, className(i)), add(el("div"), bar), el("span", "num " + top, n));
    });
    return grid;
  }

  /* The record's patch: its cell (the receptive-field box, or where the box is larger than the image,
   * the image-sized window of it that holds its part inside the image) cut out of the whole image. */
  function patch(record, size, scale, label) {
    var images = DATA.images.sheets;
    var frame = el("div", "patch-frame");
    frame.style.width = size[1] * scale + "px";
    frame.style.height = size[0] * scale + "px";
    var whole = cell(images, images.files, Math.floor(record[0] / images.cols), record[0] % images.cols, scale, label);
    whole.style.left = -record[9] * scale + "px";
    whole.style.top = -record[8] * scale + "px";
    return add(frame, whole);
  }

  function recordBlocks(layer, channel, kind) {
    var part = layer[kind], rows = part.records[channel];
    var scale = cellScale(part.cell, 64);
    var kinds = [["patch", "patch"], ["zf", "DeconvNet"]];
    if (part.files.gbp) { kinds.push(["gbp", "Guided Backprop"]); }
    var wrap = el("div", "records");
    wrap.setAttribute("data-kind", kind);
    if (!rows.length) { add(wrap, el("p", "note", "No records.")); }
    rows.forEach(function (record, i) {
      var block = el("div", "record");
      var cells = el("div", "cells");
      kinds.forEach(function (k) {
        var label = k[1] + " of record " + (i + 1);
        if (k[0] === "patch") {
          var button = el("button", "patch");
          button.type = "button";
          button.title = "show the whole image";
          button.setAttribute("data-record", String(i));
          button.addEventListener("click", function () { openRecord(layer, channel, kind, i); });
          add(cells, add(button, patch(record, part.cell, scale, label)));
        } else {
          add(cells, cell(part, part.files[k[0]], channel, i, scale, label));
        }
      });
      add(block, cells);
      add(block, el("div", "caption", "#" + (i + 1) + " · " + fmt(record[3], 4) + " · " + imageLabel(record[0])));
      add(wrap, block);
    });
    var legend = el("p", "columns", "Each record: " + kinds.map(function (k) { return k[1]; }).join(", ") +
      ". Click a patch for its whole image.");
    return add(el("div"), legend, wrap);
  }

  function channelPage(layer, channel) {
    if (!layer.top || channel < 0 || channel >= layer.channels) {
      if (channel >= 0 && channel < layer.channels) { return layerTable(layer); }
      return missing(channelHash(layer, channel));
    }
    page = { layer: layer, channel: channel, kind: "top", record: -1, overlay: page.overlay };
    var s = layer.stats;
    var root = el("div", "page");
    var left = el("div", "left");
    var nav = el("div", "nav");
    add(nav, link("← table", layerHash(layer)));
    if (channel > 0) { add(nav, link("← channel " + (channel - 1), channelHash(layer, channel - 1))); }
    if (channel < layer.channels - 1) { add(nav, link("channel " + (channel + 1) + " →", channelHash(layer, channel + 1))); }
    add(left, nav);
    var title = el("h1");
    add(title, link(layer.name, layerHash(layer)), document.createTextNode(" / channel " + channel));
    add(left, title);
    var line = "max " + fmt(s.max[channel], 4) + " · mean " + fmt(s.mean[channel], 4) + " · active on " +
      fmt(100 * s.active[channel], 3) + "% of images";
    if (layer.classes) {
      line += " · selectivity " + fmt(layer.classes.selectivity[channel], 3) + " · top class (largest mean) " +
        className(layer.classes.top_class[channel]);
    }
    if (layer.agreement) {
      line += " · DeconvNet/GBP ρ " + fmt(layer.agreement.spearman[channel], 3) + ", SSIM " + fmt(layer.agreement.ssim[channel], 3);
    }
    add(left, el("p", null, line));
    if (s.dead[channel]) { add(left, el("p", "dead-note", "Dead: never active on these images.")); }
    add(left, el("h2", null, "Top " + DATA.k));
    add(left, recordBlocks(layer, channel, "top"));
    if (layer.classes) {
      add(left, el("h2", null, "Classes of its " + layer.classes.top_n + " strongest images"));
      // The bold class is the one with the largest mean activation over all its images, which
      // need not be the tallest bar here; with top_n >= the data, every channel's bars are the data's mix.
      add(left, el("p", "note", layer.classes.top_n >= DATA.num_images ?
        "These are all " + DATA.num_images + " images: the bars are the data's class mix, the same for every " +
        "channel. Bold: the class with the largest mean activation." :
        "Bold: the class with the largest mean activation over all its images (the top class)."));
      add(left, histogram(layer, channel));
    }
    if (layer.bottom) {
      add(left, el("h2", null, "Bottom " + DATA.bottom_k));
      var lowest = layer.bottom.records[channel];
      if (lowest.length > 1 && lowest.every(function (r) { return r[3] === lowest[0][3]; })) {
        // After a ReLU most units sit at 0 on many images: these are ties, not what the unit is against.
        add(left, el("p", "note", "All " + lowest.length + " values are " + fmt(lowest[0][3], 4) + ": ties, " +
          "ordered by image index. After a ReLU, mine the layer before it (the convolution's output) to see " +
          "what the unit responds against."));
      }
      add(left, recordBlocks(layer, channel, "bottom"));
    }
    var detail = el("div", "detail");
    detail.id = "detail";
    add(detail, el("p", "note", "Click a patch (or focus it and press Enter) to see its whole image, " +
      "with the receptive-field box and Captum's overlays of the projection."));
    add(root, left, detail);
    show(root, layerHash(layer));
  }

  function openRecord(layer, channel, kind, index) {
    var part = layer[kind], record = part.records[channel][index];
    var images = DATA.images.sheets;
    page.kind = kind;
    page.record = index;
    var chosen = content.querySelectorAll(".record button.chosen");
    for (var i = 0; i < chosen.length; i++) { chosen[i].classList.remove("chosen"); }
    var button = content.querySelector(".records[data-kind=\"" + kind + "\"] button[data-record=\"" + index + "\"]");
    if (button) { button.classList.add("chosen"); }
    var detail = document.getElementById("detail");
    detail.textContent = "";
    var h = images.cell[0], w = images.cell[1];
    var slot = record[0];
    var top = record[4], left = record[5], bottom = record[6], right = record[7];
    // Room around the image for the part of the box that leaves it, up to a quarter of the image a
    // side: a deep layer's field can be many times the image, and the image must stay in view.
    var room = [Math.max(0, -top), Math.max(0, right - w), Math.max(0, bottom - h), Math.max(0, -left)];
    var shown = room.map(function (r, i) { return Math.min(r, 0.25 * (i % 2 ? w : h)); });
    // The image at 320 px, smaller where the frame with its room would not fit the panel's 380 px.
    var scale = Math.min(320 / Math.max(h, w), 380 / Math.max(w + shown[1] + shown[3], h + shown[0] + shown[2]));
    var whole = el("div", "whole");
    whole.id = "whole";
    whole.style.width = w * scale + "px";
    whole.style.height = h * scale + "px";
    add(whole, cell(images, images.files, Math.floor(slot / images.cols), slot % images.cols, scale, imageLabel(slot)));
    var frame = el("div", "whole-frame");
    frame.style.width = (w + shown[1] + shown[3]) * scale + "px";
    frame.style.height = (h + shown[0] + shown[2]) * scale + "px";
    whole.style.marginTop = shown[0] * scale + "px";
    whole.style.marginLeft = shown[3] * scale + "px";
    var overlayKey = kind === "top" ? page.overlay : "none";
    if (overlayKey !== "none" && part.files[overlayKey]) {
      var overlay = cell(part, part.files[overlayKey], channel, index, scale);
      overlay.classList.add("overlay");
      overlay.style.left = record[9] * scale + "px";  // the overlay is drawn on the record's cell
      overlay.style.top = record[8] * scale + "px";
      add(whole, overlay);
    }
    var box = el("div", "box");
    box.id = "rf-box";
    box.style.left = left * scale + "px";
    box.style.top = top * scale + "px";
    box.style.width = (right - left) * scale + "px";
    box.style.height = (bottom - top) * scale + "px";
    box.setAttribute("data-box", [top, left, bottom, right].join(","));
    add(whole, box);
    add(detail, add(frame, whole));
    if (room.some(function (r, i) { return r > shown[i]; })) {
      add(detail, el("p", "note", "The receptive field (" + (bottom - top) + " × " + (right - left) + " px) reaches " +
        "far past the image: its yellow box is cut at the frame."));
    }
    if (kind === "top") {
      var choice = el("div", "controls");
      OVERLAYS.forEach(function (o) {
        var label = el("label");
        var radio = el("input");
        radio.type = "radio";
        radio.name = "overlay";
        radio.value = o[0];
        radio.checked = o[0] === page.overlay;
        radio.addEventListener("change", function () { page.overlay = o[0]; openRecord(layer, channel, kind, index); });
        add(choice, add(label, radio, document.createTextNode(" " + o[1])));
      });
      add(detail, choice);
    }
    add(detail, el("p", null, imageLabel(slot)));
    add(detail, el("p", "note", (kind === "top" ? "top " : "bottom ") + (index + 1) + " · value " + fmt(record[3], 4) +
      " · unit (y " + record[1] + ", x " + record[2] + ") · receptive field rows " + top + "–" + bottom +
      ", columns " + left + "–" + right + " (half-open; may leave the image)"));
    if (kind === "top") {
      add(detail, el("p", "note", "Overlays: Captum's visualize_image_attr (absolute value, 2% outliers) of the " +
        "DeconvNet projection, drawn over the record's cell (its receptive field, or where that is larger than " +
        "the image, the image-sized part of it over the image)."));
    }
  }

  // ---- addresses and keys -------------------------------------------------------------
  function decodeSafe(text) {
    try { return decodeURIComponent(text); } catch (err) { return text; }
  }

  function route() {
    var hash = location.hash.slice(1);
    if (hash === "") { return overview(); }
    if (hash.charAt(0) === ":") { return staticView(hash.slice(1)); }
    var whole = byName[decodeSafe(hash)];
    if (whole) { return layerTable(whole); }
    var cut = hash.lastIndexOf("/");
    if (cut > 0 && /^\d+$/.test(hash.slice(cut + 1))) {
      var layer = byName[decodeSafe(hash.slice(0, cut))];
      if (layer) { return channelPage(layer, Number(hash.slice(cut + 1))); }
    }
    missing("#" + hash);
  }

  function go(hash) {
    if (location.hash === hash || (hash === "#" && location.hash === "")) { route(); } else { location.hash = hash; }
  }

  function runSearch() {
    var query = search.value.trim();
    var match = /^(.*)\/(\d+)$/.exec(query);
    if (match && byName[match[1]]) { return go(channelHash(byName[match[1]], Number(match[2]))); }
    if (byName[query]) { return go(layerHash(byName[query])); }
    var items = document.querySelectorAll("#layers li");
    for (var i = 0; i < items.length; i++) {
      if (!items[i].hidden) { return go(layerHash(byName[items[i].getAttribute("data-layer")])); }
    }
  }

  function stepLayer(step) {
    var current = table.layer || page.layer;
    var next = current ? DATA.layers[current.position + step] : DATA.layers[0];
    if (next) { go(layerHash(next)); }
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var target = event.target;
    if (target === search) {
      if (event.key === "Enter") {
        event.preventDefault();
        runSearch();
        search.value = "";  // the side bar lists every layer again
        filterSide("");
        search.blur();
      }
      if (event.key === "Escape") { search.value = ""; filterSide(""); search.blur(); }
      return;
    }
    if (target.tagName === "SELECT" || (target.tagName === "INPUT" && target.type !== "radio")) { return; }
    var view = location.hash.slice(1);
    var onChannel = !content.hidden && page.layer && content.querySelector("#detail");
    if (event.key === "/") {
      event.preventDefault();
      search.focus();
      search.select();
    } else if (onChannel) {
      var layer = page.layer;
      if (event.key === "ArrowRight" && page.channel < layer.channels - 1) { go(channelHash(layer, page.channel + 1)); }
      else if (event.key === "ArrowLeft" && page.channel > 0) { go(channelHash(layer, page.channel - 1)); }
      else if (event.key === "Escape") { go(layerHash(layer)); }
      else { return; }
      event.preventDefault();
    } else if (!content.hidden && content.querySelector("#channels")) {
      if (event.key === "ArrowDown") { moveCursor(1); }
      else if (event.key === "ArrowUp") { moveCursor(-1); }
      else if (event.key === "Home") { table.cursor = 0; moveCursor(0); }
      else if (event.key === "End") { table.cursor = table.order.length - 1; moveCursor(0); }
      else if (event.key === "Enter" && table.cursor >= 0) { go(channelHash(table.layer, table.order[table.cursor])); }
      else if (event.key === "ArrowRight") { stepLayer(1); }
      else if (event.key === "ArrowLeft") { stepLayer(-1); }
      else if (event.key === "Escape") { go("#"); }
      else { return; }
      event.preventDefault();
    } else if (view === "" && (event.key === "ArrowRight" || event.key === "ArrowDown")) {
      event.preventDefault();
      stepLayer(0);
    }
  }

  function start() {
    if (DATA.format !== 1) {
      content.textContent = "This explorer's data has format " + DATA.format + ", which this script does not read.";
      return;
    }
    buildSide();
    search.addEventListener("input", function () { filterSide(search.value.trim()); });
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", function () {
      page = { layer: null, channel: -1, kind: "top", record: -1, overlay: page.overlay };
      route();
    });
    route();
    // Time from navigation start to the first view drawn and listening to keys (read by the tests).
    document.documentElement.setAttribute("data-ready-ms", String(Math.round(performance.now())));
  }

  start();
})();
