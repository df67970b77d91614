// Draws the mapping lines between the two module trees and keeps them right when a subtree collapses.
// Runs from the page itself (no library, nothing fetched). Every line is one <path> in #links; a key
// hidden inside a collapsed subtree is drawn to that subtree's summary, and lines that then join the
// same two rows are merged into one, thicker line (its data-count says how many keys it carries).
(function () {
  "use strict";
  var edges = JSON.parse(document.getElementById("edges").textContent);
  var grid = document.getElementById("tree-grid");
  var svg = document.getElementById("links");
  var info = document.getElementById("info");
  var colors = {};
  document.querySelectorAll("#legend .rule").forEach(function (b) {
    colors[b.dataset.group] = b.querySelector(".sw").style.background;
  });
  var rows = {};
  document.querySelectorAll("li.key").forEach(function (li) { rows[li.dataset.side + ":" + li.dataset.key] = li; });
  var focus = null, selected = null;

  function shown(el) {  // the row a key is seen at: itself, or the summary of its outermost collapsed subtree
    var rep = el;
    for (var d = el.parentElement.closest("details"); d; d = d.parentElement.closest("details")) {
      if (!d.open) { rep = d.querySelector(":scope > summary"); }
    }
    return rep;
  }

  function draw() {
    var box = svg.getBoundingClientRect();
    var gutter = grid.querySelector(".gutter").getBoundingClientRect();
    var merged = {}, order = [];
    edges.forEach(function (e, i) {
      var a = rows["old:" + e[0]], b = rows["new:" + e[1]];
      if (!a || !b) { return; }
      var ra = shown(a), rb = shown(b);
      var ya = (ra.querySelector(".lbl") || ra).getBoundingClientRect();
      var yb = (rb.querySelector(".lbl") || rb).getBoundingClientRect();
      var id = e[2] + "|" + e[3] + "|" + Math.round(ya.top) + "|" + Math.round(yb.top);
      if (!merged[id]) {  // from the end of the legacy label to the start of the refactored one
        merged[id] = {x0: Math.min(ya.right, gutter.left) + 3 - box.left, x1: yb.left - 3 - box.left,
                      y0: ya.top + ya.height / 2 - box.top, y1: yb.top + yb.height / 2 - box.top, group: e[2],
                      kind: e[3], keys: []};
        order.push(id);
      }
      merged[id].keys.push(i);
    });
    var out = [];
    order.forEach(function (id) {
      var m = merged[id], c0 = (gutter.left - box.left + 20).toFixed(1), c1 = (gutter.right - box.left - 20).toFixed(1);
      var d = "M" + m.x0.toFixed(1) + " " + m.y0.toFixed(1) + " H" + (gutter.left - box.left).toFixed(1) + " C" +
              c1 + " " + m.y0.toFixed(1) + " " + c0 + " " + m.y1.toFixed(1) + " " + (gutter.right - box.left).toFixed(1) +
              " " + m.y1.toFixed(1) + " H" + m.x1.toFixed(1);
      var w = (1.2 + Math.log2(m.keys.length)).toFixed(2);
      out.push('<path class="link ' + m.kind + '" data-group="' + m.group + '" data-count="' + m.keys.length +
               '" data-edges="' + m.keys.join(" ") + '" stroke="' + (colors[m.group] || "#999") +
               '" stroke-width="' + w + '" d="' + d + '"></path>');
    });
    svg.innerHTML = out.join("");
    paint();
  }

  function paint() {  // dim everything but the focused rule group or the selected key's lines
    svg.querySelectorAll("path").forEach(function (p) {
      var hot = selected !== null && p.dataset.edges.split(" ").some(function (k) {
        return selected.indexOf(Number(k)) >= 0; });
      p.classList.toggle("hot", hot);
      p.classList.toggle("dim", (focus !== null && p.dataset.group !== focus) || (selected !== null && !hot));
    });
  }

  function select(li) {
    document.querySelectorAll("li.key.sel").forEach(function (x) { x.classList.remove("sel"); });
    li.classList.add("sel");
    var key = li.dataset.key, side = li.dataset.side;
    selected = [];
    var other = [];
    edges.forEach(function (e, i) {
      if ((side === "old" && e[0] === key) || (side === "new" && e[1] === key)) {
        selected.push(i);
        other.push(side === "old" ? e[1] : e[0]);
      }
    });
    info.hidden = false;
    info.textContent = (side === "old" ? "legacy " : "refactored ") + key + "\nshape " + (li.dataset.shape || "scalar") +
      ", " + li.dataset.dtype + ", sha256 " + li.dataset.sha + "\nrule " + (li.dataset.rule || "-") + " (" +
      li.dataset.status + ")" + (li.dataset.reason ? ": " + li.dataset.reason : "") +
      (other.length ? "\n" + (side === "old" ? "-> " : "<- ") + other.join(", ") : "");
    paint();
  }

  document.querySelectorAll("li.key").forEach(function (li) {
    li.addEventListener("click", function () { select(li); });
    li.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { select(li); } });
  });
  document.querySelectorAll("#legend .rule").forEach(function (b) {
    b.addEventListener("click", function () {
      focus = focus === b.dataset.group ? null : b.dataset.group;
      document.querySelectorAll("#legend .rule").forEach(function (x) {
        x.classList.toggle("on", x.dataset.group === focus); });
      paint();
    });
  });
  document.querySelectorAll(".tree details").forEach(function (d) { d.addEventListener("toggle", draw); });
  function setAll(open) {
    document.querySelectorAll(".tree details").forEach(function (d) { d.open = open; });
    draw();
  }
  document.getElementById("expand-all").addEventListener("click", function () { setAll(true); });
  document.getElementById("collapse-all").addEventListener("click", function () { setAll(false); });
  window.addEventListener("resize", draw);
  window.addEventListener("beforeprint", function () {  // print everything, trees expanded and tables open
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
    draw();
  });
  draw();
  document.body.dataset.readyMs = String(Math.round(performance.now()));  // since navigation start
  document.body.dataset.ready = "1";
})();
