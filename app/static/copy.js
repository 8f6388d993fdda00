// The console's one script (CSP script-src 'self'): a Copy button for a token shown once.
// Progressive enhancement: without script the token is selectable text and the button stays hidden.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    var status = document.getElementById("copy-status");
    if (!source) { return; }
    function said(text) { if (status) { status.textContent = text; } }
    function selectToken() {
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = source.textContent.trim();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(
          function () { said("Copied."); },
          function () { selectToken(); said("Selected: press Ctrl+C (⌘C) to copy."); }
        );
      } else {
        selectToken();
        said(document.execCommand && document.execCommand("copy") ? "Copied." : "Selected: press Ctrl+C (⌘C) to copy.");
      }
    });
  });
});
