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
  /* Every head of one example as small multiples (click or Enter enlarges one), the enlarged head
     as a table of cells, and two strips of tokens: hovering or focusing a token highlights what it
     attends to and what attends to it, in every head at once. Colours are the static figures'
     colour map (its stops come in data-ramp) on a white plot surface in both themes, as the
     figures are, so the strongest weights stay visible in dark mode too. */
  var PAPER = [255, 255, 255];

  function hexRgb(h) {
    return [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)];
  }

  function makeScale(stops) {
    var ramp = stops.split(/\s+/).filter(Boolean).map(hexRgb);
    return function (w) {
      var t = Math.max(0, Math.min(1, +w || 0)) * (ramp.length - 1);
      var i = Math.min(ramp.length - 2, Math.floor(t)), f = t - i;
      return [0, 1, 2].map(function (c) { return Math.round(ramp[i][c] + (ramp[i + 1][c] - ramp[i][c]) * f); });
    };
  }

  function css(rgb) { return "rgb(" + rgb.join(",") + ")"; }

  function luminance(rgb) { /* WCAG relative luminance */
    var v = rgb.map(function (c) { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
  }

  function inkOn(rgb) { /* black or white text, whichever contrasts more */
    var l = luminance(rgb);
    return (l + 0.05) / 0.05 >= 1.05 / (l + 0.05) ? "#111111" : "#ffffff";
  }

  function fade(rgb, keep) {
    return rgb.map(function (c, i) { return Math.round(PAPER[i] + (c - PAPER[i]) * keep); });
  }

  function range(n) { var out = []; for (var i = 0; i < n; i++) out.push(i); return out; }

  function initViewer(box) {
    var data = (window.REPORTGEN_ATTENTION || {})[box.getAttribute("data-example")];
    if (!data) return; /* the static figures stay the whole story */
    var scale = makeScale(box.getAttribute("data-ramp") || "#ffffff #000000");
    var W = data.weights, tokens = data.tokens, n = tokens.length;
    var nLayers = W.length, nHeads = W[0].length;
    var answer = {};
    data.answer_positions.forEach(function (p) { answer[p] = true; });
    var overview = box.querySelector(".v-overview"), grid = box.querySelector(".v-grid");
    var title = box.querySelector(".v-title"), status = box.querySelector(".v-status");
    var tip = box.querySelector(".v-tooltip");
    var state = {layer: 0, head: 0, shown: "all", locked: null, token: null, cell: null};
    var thumbs = [], cells = [], rowHeads = [], colHeads = [], lit = [], table = null;
    var chips = {to: [], from: []};

    var m = /^#L(\d+)H(\d+)$/.exec(window.location.hash);
    if (m && +m[1] < nLayers) state.layer = +m[1]; /* layer and head carried over where this model has them */
    if (m && +m[2] < nHeads) state.head = +m[2];
    if (nLayers * nHeads > 32) state.shown = String(state.layer); /* many heads: one layer at a time */

    function name(l, h) { return "L" + l + "H" + h; }
    function tok(i) { return i + " '" + tokens[i] + "'"; }
    function weights() { return W[state.layer][state.head]; }

    [box.querySelector(".v-model"), box.querySelector(".v-example")].forEach(function (sel) {
      sel.addEventListener("change", function () {
        window.location.href = sel.value + "#" + name(state.layer, state.head);
      });
    });

    /* -- the overview: one thumbnail per head, a row per layer */
    function buildOverview() {
      overview.textContent = "";
      thumbs = [];
      var layers = state.shown === "all" ? range(nLayers) : [+state.shown];
      layers.forEach(function (l, r) {
        var row = el("div", "v-row");
        row.appendChild(el("span", "v-row-label", "Layer " + l));
        range(nHeads).forEach(function (h) {
          var b = el("button", "v-thumb");
          b.type = "button";
          b.setAttribute("data-layer", l);
          b.setAttribute("data-head", h);
          b.setAttribute("aria-label", "Layer " + l + ", head " + h + " (" + name(l, h) + "): enlarge");
          b.title = name(l, h) + ": click to enlarge";
          var c = el("canvas");
          c.width = n;
          c.height = n;
          b.appendChild(c);
          b.appendChild(el("span", "v-thumb-name", name(l, h)));
          row.appendChild(b);
          thumbs.push({layer: l, head: h, row: r, button: b, canvas: c});
        });
        overview.appendChild(row);
      });
      markSelected();
      paintThumbs();
    }

    function paintThumbs() {
      var t = state.token;
      thumbs.forEach(function (th) {
        var w = W[th.layer][th.head], ctx = th.canvas.getContext("2d");
        var img = ctx.createImageData(n, n), px = img.data;
        for (var q = 0; q < n; q++) {
          for (var k = 0; k < n; k++) {
            var rgb = k > q ? PAPER : scale(w[q][k]);
            if (t !== null && q !== t && k !== t && k <= q) rgb = fade(rgb, 0.25);
            var o = 4 * (q * n + k);
            px[o] = rgb[0]; px[o + 1] = rgb[1]; px[o + 2] = rgb[2]; px[o + 3] = 255;
          }
        }
        ctx.putImageData(img, 0, 0);
      });
    }

    function markSelected() {
      var current = null;
      thumbs.forEach(function (th) {
        var on = th.layer === state.layer && th.head === state.head;
        th.button.classList.toggle("selected", on);
        th.button.setAttribute("aria-pressed", on ? "true" : "false");
        th.button.tabIndex = -1;
        if (on) current = th;
      });
      if (thumbs.length) (current || thumbs[0]).button.tabIndex = 0;
    }

    function select(l, h) {
      state.layer = l;
      state.head = h;
      state.cell = null;
      markSelected();
      buildDetail();
      paintStrips();
      describe();
      try { window.history.replaceState(null, "", "#" + name(l, h)); } catch (e) { /* some file:// setups refuse */ }
    }

    overview.addEventListener("click", function (ev) {
      var b = ev.target.closest(".v-thumb");
      if (b) select(+b.getAttribute("data-layer"), +b.getAttribute("data-head"));
    });

    overview.addEventListener("keydown", function (ev) {
      var i = thumbs.map(function (th) { return th.button; }).indexOf(ev.target);
      if (i < 0) return;
      var th = thumbs[i], rows = thumbs[thumbs.length - 1].row + 1, row = th.row, head = th.head;
      if (ev.key === "ArrowRight") head = Math.min(nHeads - 1, head + 1);
      else if (ev.key === "ArrowLeft") head = Math.max(0, head - 1);
      else if (ev.key === "ArrowDown") row = Math.min(rows - 1, row + 1);
      else if (ev.key === "ArrowUp") row = Math.max(0, row - 1);
      else if (ev.key === "Home") head = 0;
      else if (ev.key === "End") head = nHeads - 1;
      else return;
      ev.preventDefault();
      var next = thumbs[row * nHeads + head];
      thumbs.forEach(function (x) { x.button.tabIndex = -1; });
      next.button.tabIndex = 0;
      next.button.focus();
    });

    Array.prototype.forEach.call(box.querySelectorAll(".v-layers input"), function (radio) {
      radio.checked = radio.value === state.shown;
      radio.addEventListener("change", function () {
        state.shown = radio.value;
        buildOverview();
        if (state.shown !== "all" && +state.shown !== state.layer) select(+state.shown, state.head);
      });
    });

    /* -- the enlarged head: cells as large as the width allows (11-30 px) beside the row labels,
       each with 1 px spacing (borders are inside a cell) */
    function cellSize() {
      return Math.max(11, Math.min(30, Math.floor(((grid.clientWidth || 640) - 48) / n) - 1));
    }

    function buildDetail() {
      var w = weights();
      title.textContent = "Layer " + state.layer + ", head " + state.head + " (" + name(state.layer, state.head) +
        "): rows are queries, columns keys";
      var size = cellSize();
      grid.style.setProperty("--cell", size + "px");
      table = el("table");
      table.tabIndex = 0;
      table.setAttribute("aria-label", "Attention weights of layer " + state.layer + ", head " + state.head +
        "; arrow keys move between cells");
      cells = [];
      rowHeads = [];
      colHeads = [];
      lit = [];
      var header = el("tr");
      header.appendChild(el("th", "corner", ""));
      tokens.forEach(function (t, k) {
        var th = el("th", "k" + (answer[k] ? " answer" : "") + (t.length > 1 ? " long" : ""), t);
        th.setAttribute("data-t", k);
        colHeads.push(th);
        header.appendChild(th);
      });
      table.appendChild(header);
      tokens.forEach(function (qt, q) {
        var tr = el("tr");
        var th = el("th", answer[q] ? "q answer" : "q", qt);
        th.setAttribute("data-t", q);
        rowHeads.push(th);
        tr.appendChild(th);
        var row = [];
        tokens.forEach(function (kt, k) {
          var td = el("td");
          if (k > q) {
            td.className = "masked";
          } else {
            td.style.backgroundColor = css(scale(w[q][k]));
            td.setAttribute("data-q", q);
            td.setAttribute("data-k", k);
          }
          row.push(td);
          tr.appendChild(td);
        });
        cells.push(row);
        table.appendChild(tr);
      });
      grid.textContent = "";
      grid.appendChild(table);
      grid.setAttribute("data-layer", state.layer);
      grid.setAttribute("data-head", state.head);
      grid.setAttribute("data-cell", size);
      tip.hidden = true;
      markTable(state.token);
    }

    function markTable(t) {
      lit.forEach(function (node) { node.classList.remove("on"); });
      lit = [];
      table.classList.toggle("tok-on", t !== null);
      if (t === null) return;
      for (var k = 0; k <= t; k++) lit.push(cells[t][k]);
      for (var q = t + 1; q < n; q++) lit.push(cells[q][t]);
      lit.push(rowHeads[t], colHeads[t]);
      lit.forEach(function (node) { node.classList.add("on"); });
    }

    function cellText(q, k) {
      return name(state.layer, state.head) + "  query " + tok(q) + " \u2192 key " + tok(k) + "  weight " +
        weights()[q][k].toFixed(3);
    }

    function showCell(td, fromKeyboard) {
      var prev = grid.querySelector("td.hot");
      if (prev) prev.classList.remove("hot");
      td.classList.add("hot");
      var q = +td.getAttribute("data-q"), k = +td.getAttribute("data-k");
      state.cell = [q, k];
      tip.textContent = cellText(q, k);
      var boxRect = box.getBoundingClientRect(), r = td.getBoundingClientRect();
      tip.style.left = (r.right - boxRect.left + 6) + "px";
      tip.style.top = (r.top - boxRect.top - 4) + "px";
      tip.hidden = false;
      if (fromKeyboard) {
        status.textContent = cellText(q, k);
        td.scrollIntoView({block: "nearest", inline: "nearest"});
      }
    }

    grid.addEventListener("mouseover", function (ev) {
      var td = ev.target.closest("td[data-q]");
      if (td) { showCell(td, false); return; }
      var th = ev.target.closest("th[data-t]");
      if (th) showToken(+th.getAttribute("data-t"));
    });
    grid.addEventListener("mouseleave", function () { tip.hidden = true; showToken(null); });

    grid.addEventListener("focusin", function (ev) {
      if (ev.target !== table) return;
      var q = state.cell ? state.cell[0] : (data.answer_positions.length ? data.answer_positions[0] : n - 1);
      var w = weights()[q], k = state.cell ? state.cell[1] : w.indexOf(Math.max.apply(null, w.slice(0, q + 1)));
      showCell(cells[q][k], true);
    });
    grid.addEventListener("focusout", function () { tip.hidden = true; });
    grid.addEventListener("keydown", function (ev) {
      if (ev.target !== table || !state.cell) return;
      var q = state.cell[0], k = state.cell[1];
      if (ev.key === "ArrowUp") q = Math.max(0, q - 1);
      else if (ev.key === "ArrowDown") q = Math.min(n - 1, q + 1);
      else if (ev.key === "ArrowLeft") k = Math.max(0, k - 1);
      else if (ev.key === "ArrowRight") k = k + 1;
      else if (ev.key === "Home") k = 0;
      else if (ev.key === "End") k = q;
      else return;
      ev.preventDefault();
      showCell(cells[q][Math.min(k, q)], true);
    });

    /* -- the token strips */
    function buildStrips() {
      Array.prototype.forEach.call(box.querySelectorAll(".v-strip"), function (strip) {
        var dir = strip.getAttribute("data-dir"), holder = strip.querySelector(".v-chips");
        holder.textContent = "";
        chips[dir] = tokens.map(function (t, i) {
          var b = el("button", answer[i] ? "v-chip answer" : "v-chip", t);
          b.type = "button";
          b.tabIndex = i === 0 ? 0 : -1;
          b.setAttribute("data-t", i);
          holder.appendChild(b);
          return b;
        });
        holder.addEventListener("mouseover", function (ev) {
          var b = ev.target.closest(".v-chip");
          if (b) showToken(+b.getAttribute("data-t"));
        });
        holder.addEventListener("mouseleave", function () {
          if (!holder.contains(document.activeElement)) showToken(null);
        });
        holder.addEventListener("focusin", function (ev) {
          var b = ev.target.closest(".v-chip");
          if (b) showToken(+b.getAttribute("data-t"));
        });
        holder.addEventListener("focusout", function (ev) {
          if (!holder.contains(ev.relatedTarget)) showToken(null);
        });
        holder.addEventListener("click", function (ev) {
          var b = ev.target.closest(".v-chip");
          if (!b) return;
          var t = +b.getAttribute("data-t");
          state.locked = state.locked === t ? null : t;
          state.token = null;
          showToken(t);
        });
        holder.addEventListener("keydown", function (ev) {
          var i = chips[dir].indexOf(ev.target);
          if (i < 0) return;
          var next = ev.key === "ArrowRight" ? Math.min(n - 1, i + 1) : ev.key === "ArrowLeft" ? Math.max(0, i - 1)
            : ev.key === "Home" ? 0 : ev.key === "End" ? n - 1 : null;
          if (next === null) return;
          ev.preventDefault();
          chips[dir][i].tabIndex = -1;
          chips[dir][next].tabIndex = 0;
          chips[dir][next].focus();
        });
      });
    }

    function paintStrips() {
      var t = state.token, w = weights();
      ["to", "from"].forEach(function (dir) {
        chips[dir].forEach(function (b, i) {
          var v = null;
          if (t !== null) v = dir === "to" ? (i <= t ? w[t][i] : null) : (i >= t ? w[i][t] : null);
          if (v === null) {
            b.style.backgroundColor = "";
            b.style.color = "";
            b.setAttribute("aria-label", "token " + tok(i));
          } else {
            var rgb = scale(v);
            b.style.backgroundColor = css(rgb);
            b.style.color = inkOn(rgb);
            b.setAttribute("aria-label", "token " + tok(i) + ", weight " + v.toFixed(3));
          }
          b.classList.toggle("masked", t !== null && v === null);
          b.classList.toggle("active", i === t);
          b.setAttribute("aria-pressed", state.locked === i ? "true" : "false");
        });
      });
    }

    function strongest(pairs) {
      return pairs.reduce(function (best, p) { return p[1] > best[1] ? p : best; }, [null, -1]);
    }

    function describe() {
      var t = state.token;
      if (t === null) {
        status.textContent = "Hover or focus a token to see what it attends to and what attends to it.";
        return;
      }
      var w = weights();
      var to = strongest(range(t + 1).map(function (k) { return [k, w[t][k]]; }));
      var from = strongest(range(n - t).map(function (j) { return [t + j, w[t + j][t]]; }));
      status.textContent = "Token " + tok(t) + " in " + name(state.layer, state.head) + ": attends most to " +
        tok(to[0]) + " (" + to[1].toFixed(3) + "); attended most by " + tok(from[0]) + " (" + from[1].toFixed(3) + ")" +
        (state.locked === t ? "; kept (click it or press Escape to let go)" : "");
    }

    function showToken(t) {
      var next = t === null ? state.locked : t;
      if (next === state.token) return;
      state.token = next;
      box.setAttribute("data-token", next === null ? "" : next);
      paintThumbs();
      markTable(next);
      paintStrips();
      describe();
    }

    box.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape" && state.locked !== null) {
        state.locked = null;
        showToken(null);
      }
    });

    var resizing = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizing);
      resizing = setTimeout(function () {
        if (cellSize() !== +grid.getAttribute("data-cell")) buildDetail();
      }, 150);
    });

    var legend = box.querySelector(".v-scale-bar");
    legend.style.backgroundImage = "linear-gradient(to right, " +
      range(11).map(function (i) { return css(scale(i / 10)); }).join(", ") + ")";
    box.hidden = false;
    buildOverview();
    buildStrips();
    buildDetail();
    paintStrips();
    describe();
  }

  Array.prototype.forEach.call(document.querySelectorAll(".attn-viewer"), initViewer);
  initSearch();
})();
