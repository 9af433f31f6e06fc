// The admin page's users table, made a little easier with JavaScript: a box that ticks
// every user on the page, and a question before a form with data-confirm is sent. Every
// form works without it.
(function () {
  "use strict";
  var all = document.getElementById("tick-all");
  if (all) {
    all.hidden = false;
    all.addEventListener("change", function () {
      document.querySelectorAll("#users input.tick").forEach(function (box) {
        box.checked = all.checked;
      });
    });
  }
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var button = ev.submitter;
    var ask = (button && button.dataset.confirm) || form.dataset.confirm;
    if (ask && !window.confirm(ask)) {
      ev.preventDefault();
    }
  });
})();
