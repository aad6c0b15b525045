// The fedtune dashboard's only script: pages stay live, tables sort and filter.
// Pages are complete without it; it needs no library.
(function () {
  'use strict';

  var body = document.body;
  var content = document.getElementById('content');
  var indicator = document.getElementById('live');
  // What the user chose, kept when new content is swapped in.
  var sorts = {};
  var filters = {};

  function key(row, index) {
    var cell = row.cells[index];
    if (!cell) return null;
    var value = cell.getAttribute('data-value');
    if (value !== null) return value === '' ? null : parseFloat(value);
    return cell.textContent.trim().toLowerCase();
  }

  function sortTable(table, index, ascending) {
    var tbody = table.tBodies[0];
    if (!tbody) return;
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var x = key(a, index);
      var y = key(b, index);
      if (x === y) return 0;
      if (x === null) return 1; // empty cells last, either way
      if (y === null) return -1;
      var order = x < y ? -1 : 1;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { tbody.appendChild(row); });
    var headers = table.tHead ? table.tHead.rows[0].cells : [];
    for (var i = 0; i < headers.length; i++) {
      headers[i].removeAttribute('aria-sort');
    }
    if (headers[index]) headers[index].setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
  }

  function filterTable(name, text) {
    var table = document.getElementById(name);
    if (!table || !table.tBodies[0]) return;
    var words = text.toLowerCase().split(/\s+/).filter(Boolean);
    var rows = table.tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i].textContent.toLowerCase();
      var shown = words.every(function (w) { return row.indexOf(w) >= 0; });
      rows[i].style.display = shown ? '' : 'none';
    }
  }

  function wire(root) {
    root.querySelectorAll('table.sortable').forEach(function (table) {
      var headers = table.tHead ? table.tHead.rows[0].cells : [];
      Array.prototype.forEach.call(headers, function (th, index) {
        if (!th.hasAttribute('data-sort')) return;
        th.addEventListener('click', function () {
          var ascending = th.getAttribute('aria-sort') !== 'ascending';
          sorts[table.id] = [index, ascending];
          sortTable(table, index, ascending);
        });
      });
      var chosen = sorts[table.id];
      if (chosen) sortTable(table, chosen[0], chosen[1]);
    });
    root.querySelectorAll('input[data-filter]').forEach(function (input) {
      var name = input.getAttribute('data-filter');
      if (filters[name] !== undefined) input.value = filters[name];
      input.addEventListener('input', function () {
        filters[name] = input.value;
        filterTable(name, input.value);
      });
      if (input.value) filterTable(name, input.value);
    });
  }

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.hash = '';
    url.searchParams.set('fragment', '1');
    return url.toString();
  }

  function show(text, ok) {
    if (!indicator) return;
    indicator.textContent = text;
    indicator.className = ok ? 'live' : 'live lost';
  }

  function poll() {
    var versionUrl = body.getAttribute('data-version-url');
    fetch(versionUrl, { cache: 'no-store', credentials: 'same-origin' })
      .then(function (r) {
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.text();
      })
      .then(function (version) {
        if (version === body.getAttribute('data-version')) return null;
        return fetch(fragmentUrl(), { cache: 'no-store', credentials: 'same-origin' })
          .then(function (r) {
            if (!r.ok) throw new Error('HTTP ' + r.status);
            return r.text();
          })
          .then(function (html) {
            content.innerHTML = html;
            body.setAttribute('data-version', version);
            wire(content);
          });
      })
      .then(function () {
        show('live · ' + new Date().toLocaleTimeString(), true);
      })
      .catch(function (e) {
        show('cannot reach the aggregator (' + e.message + '); retrying', false);
      })
      .then(function () {
        window.setTimeout(poll, 1000);
      });
  }

  wire(document);
  if (body.hasAttribute('data-version-url')) poll();
})();
