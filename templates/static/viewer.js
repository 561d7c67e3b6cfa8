/* reportgen site script: search over the embedded index and the interactive attention viewer.
   Hand-written, no dependencies, no network: data arrive through <script> tags (works from file://). */
(function () {
  "use strict";

  var root = document.body.getAttribute("data-root") || "";

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* ---------------------------------------------------------------- search */
  function initSearch() {
    var input = document.getElementById("search");
    var list = document.getElementById("search-results");
    var index = window.REPORTGEN_SEARCH;
    if (!input || !list || !index) return;
    var haystacks = index.map(function (e) { return (e.t + " " + e.k + " " + e.s).toLowerCase(); });
    input.disabled = false;

    function show() {
      var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      list.textContent = "";
      if (!terms.length) { list.hidden = true; return; }
      var shown = 0;
      for (var i = 0; i < index.length && shown < 30; i++) {
        var hay = haystacks[i];
        if (!terms.every(function (t) { return hay.indexOf(t) >= 0; })) continue;
        var li = el("li");
        var a = el("a", "", index[i].t);
        a.href = root + index[i].u;
        li.appendChild(a);
        li.appendChild(el("span", "kind", index[i].k));
        list.appendChild(li);
        shown++;
      }
      if (!shown) list.appendChild(el("li", "", "No matches."));
      list.hidden = false;
    }

    input.addEventListener("input", show);
    input.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape") { input.value = ""; show(); }
    });
  }

  /* ---------------------------------------------------------------- attention viewer */
  function colour(w) {
    /* white -> dark blue, matching the static figures' "Blues" scale */
    var t = Math.max(0, Math.min(1, w));
    var r = Math.round(247 + (8 - 247) * t), g = Math.round(251 + (48 - 251) * t), b = Math.round(255 + (107 - 255) * t);
    return "rgb(" + r + "," + g + "," + b + ")";
  }

  function initViewer(box) {
    var data = (window.REPORTGEN_ATTENTION || {})[box.getAttribute("data-example")];
    if (!data) return; /* the static figures stay the whole story */
    var layerSel = box.querySelector(".v-layer");
    var headSel = box.querySelector(".v-head");
    var grid = box.querySelector(".v-grid");
    var tip = box.querySelector(".v-tooltip");
    var tokens = data.tokens;
    var answer = {};
    data.answer_positions.forEach(function (p) { answer[p] = true; });

    [box.querySelector(".v-model"), box.querySelector(".v-example")].forEach(function (sel) {
      sel.addEventListener("change", function () {
        window.location.href = sel.value + "#L" + layerSel.value + "H" + headSel.value;
      });
    });

    var m = /^#L(\d+)H(\d+)$/.exec(window.location.hash);
    if (m && +m[1] < layerSel.options.length) layerSel.value = m[1];
    if (m && +m[2] < headSel.options.length) headSel.value = m[2];

    function draw() {
      var layer = +layerSel.value, head = +headSel.value;
      var w = data.weights[layer][head];
      var table = el("table");
      table.setAttribute("aria-label", "Attention weights of layer " + layer + ", head " + head);
      var header = el("tr");
      header.appendChild(el("th", "", "q \\ k"));
      tokens.forEach(function (t) { header.appendChild(el("th", "", t)); });
      table.appendChild(header);
      tokens.forEach(function (qt, q) {
        var tr = el("tr");
        tr.appendChild(el("th", answer[q] ? "q answer" : "q", qt));
        tokens.forEach(function (kt, k) {
          var td = el("td");
          if (k > q) {
            td.className = "masked";
          } else {
            td.style.backgroundColor = colour(w[q][k]);
            td.setAttribute("data-q", q);
            td.setAttribute("data-k", k);
          }
          tr.appendChild(td);
        });
        table.appendChild(tr);
      });
      grid.textContent = "";
      grid.appendChild(table);
      grid.setAttribute("data-layer", layer);
      grid.setAttribute("data-head", head);
      tip.hidden = true;
    }

    grid.addEventListener("mouseover", function (ev) {
      var td = ev.target.closest ? ev.target.closest("td[data-q]") : null;
      if (!td) return;
      var q = +td.getAttribute("data-q"), k = +td.getAttribute("data-k");
      var layer = +layerSel.value, head = +headSel.value;
      var prev = grid.querySelector("td.hot");
      if (prev) prev.classList.remove("hot");
      td.classList.add("hot");
      tip.textContent = "L" + layer + "H" + head + "  query " + q + " '" + tokens[q] + "' \u2192 key " + k + " '" +
        tokens[k] + "'  weight " + data.weights[layer][head][q][k].toFixed(3);
      var boxRect = box.getBoundingClientRect(), cell = td.getBoundingClientRect();
      tip.style.left = (cell.right - boxRect.left + 6) + "px";
      tip.style.top = (cell.top - boxRect.top - 4) + "px";
      tip.hidden = false;
    });
    grid.addEventListener("mouseleave", function () { tip.hidden = true; });
    layerSel.addEventListener("change", draw);
    headSel.addEventListener("change", draw);
    box.hidden = false;
    draw();
  }

  Array.prototype.forEach.call(document.querySelectorAll(".attn-viewer"), initViewer);
  initSearch();
})();
