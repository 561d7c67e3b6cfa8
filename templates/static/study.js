/* reportgen study pages: sortable and filterable tables. Hand-written, no dependencies, no network.
   Sorting reads each cell's data-sort (a number, or text); filtering keeps the rows whose text holds
   every word typed. */
(function () {
  "use strict";

  function sortKey(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null || raw === "") return { empty: true };
    var num = Number(raw);
    return isNaN(num) ? { text: raw.toLowerCase() } : { num: num };
  }

  function compare(a, b) {
    if (a.empty || b.empty) return a.empty && b.empty ? 0 : a.empty ? 1 : -1;  /* empty cells last */
    if (a.num !== undefined && b.num !== undefined) return a.num - b.num;
    var x = a.text !== undefined ? a.text : String(a.num), y = b.text !== undefined ? b.text : String(b.num);
    return x < y ? -1 : x > y ? 1 : 0;
  }

  function initTable(table) {
    var body = table.tBodies[0];
    var headers = table.tHead.rows[0].cells;
    var rows = Array.prototype.slice.call(body.rows);
    var wrap = table.parentNode;
    var filter = wrap.querySelector(".table-filter");
    var count = wrap.querySelector(".table-count");
    var texts = rows.map(function (r) { return r.textContent.toLowerCase(); });

    Array.prototype.forEach.call(headers, function (th, col) {
      var button = th.querySelector("button.sort");
      if (!button) return;
      button.addEventListener("click", function () {
        var descending = th.getAttribute("aria-sort") === "ascending";
        Array.prototype.forEach.call(headers, function (h) { h.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        var keyed = rows.map(function (r, i) { return { row: r, key: sortKey(r.cells[col]), i: i }; });
        keyed.sort(function (a, b) {
          var c = compare(a.key, b.key);
          if (c !== 0 && !(a.key.empty || b.key.empty)) c = descending ? -c : c;
          return c !== 0 ? c : a.i - b.i;  /* stable */
        });
        keyed.forEach(function (k) { body.appendChild(k.row); });
      });
    });

    function applyFilter() {
      var terms = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      rows.forEach(function (r, i) {
        var keep = terms.every(function (t) { return texts[i].indexOf(t) >= 0; });
        r.hidden = !keep;
        if (keep) shown++;
      });
      if (count) count.textContent = terms.length ? shown + " of " + rows.length + " rows" : "";
    }
    if (filter) filter.addEventListener("input", applyFilter);
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), initTable);
})();
