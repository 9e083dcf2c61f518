// netlens atlas: sort a layer's channels; arrow keys move between channels.
(function () {
  var tiles = document.getElementById("tiles");
  document.querySelectorAll("button[data-sort]").forEach(function (button) {
    button.addEventListener("click", function () {
      var key = button.getAttribute("data-sort");
      var items = Array.prototype.slice.call(tiles.children);
      items.sort(function (a, b) {
        var x = parseFloat(a.getAttribute("data-" + key)), y = parseFloat(b.getAttribute("data-" + key));
        return key === "index" ? x - y : (y - x) || (a.getAttribute("data-index") - b.getAttribute("data-index"));
      });
      items.forEach(function (item) { tiles.appendChild(item); });
      document.querySelectorAll("button[data-sort]").forEach(function (other) {
        other.setAttribute("aria-pressed", String(other === button));
      });
    });
  });
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) { return; }
    var link = document.getElementById(event.key === "ArrowLeft" ? "previous" : event.key === "ArrowRight" ? "next" : "");
    if (link) { window.location.href = link.getAttribute("href"); }
  });
})();
