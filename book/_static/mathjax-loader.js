// MathJax for the book's formulas, offline first: `make book` copies Debian's MathJax 2 (libjs-mathjax) into
// _static/mathjax/; when that copy is missing (no Debian package on the building machine) the page falls back
// to the same MathJax version from a CDN, which needs a connection when the page is read.
(function () {
  var here = document.currentScript.src.replace(/[^/]*$/, "");
  var config = "?config=TeX-AMS_CHTML-full";
  function load(src, onerror) {
    var s = document.createElement("script");
    s.src = src;
    s.async = true;
    if (onerror) s.onerror = onerror;
    document.head.appendChild(s);
  }
  load(here + "mathjax/MathJax.js" + config, function () {
    load("https://cdn.jsdelivr.net/npm/mathjax@2.7.9/MathJax.js" + config);
  });
})();
