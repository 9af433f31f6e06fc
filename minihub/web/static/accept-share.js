// /hub/accept-share#code=...: post the fragment's code to the hub (see accept_share_open.html).
// Logged out, the code waits in this tab's sessionStorage while the user logs in, so it is
// never part of a URL the browser sends.
(function () {
  "use strict";
  const KEY = "minihub-share-code";
  const page = document.getElementById("accept-share-open");
  const code = new URLSearchParams(location.hash.slice(1)).get("code") || sessionStorage.getItem(KEY);
  history.replaceState(null, "", location.pathname + location.search); // off the address bar
  if (!code) {
    document.getElementById("share-code-missing").hidden = false;
    return;
  }
  if (page.dataset.loggedIn !== "1") {
    sessionStorage.setItem(KEY, code);
    location.replace(page.dataset.login);
    return;
  }
  sessionStorage.removeItem(KEY);
  document.getElementById("share-code").value = code;
  document.getElementById("share-code-form").submit();
})();
