/* A line chart of the training loss (and the validation loss per epoch) drawn as inline SVG. */
"use strict";
window.helixChart = (function () {
  const NS = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    return n;
  };

  /* series: [{name, points: [[x, y], ...], className}]; returns an <svg> with a title for screen readers. */
  function lineChart(series, { xLabel = "step", yLabel = "loss", title = "Loss" } = {}) {
    const W = 640, H = 280, L = 56, R = 16, T = 16, B = 44;
    const all = series.flatMap((s) => s.points);
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart", "aria-labelledby": "chart-title" });
    const t = svgEl("title", { id: "chart-title" });
    const last = series[0] && series[0].points.length ? series[0].points[series[0].points.length - 1][1] : null;
    t.textContent = `${title}: ${all.length} points` + (last !== null ? `, last ${series[0].name} ${last.toFixed(3)}` : "");
    svg.append(t);
    if (!all.length) return svg;
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1, y0 = Math.min(0, ...ys), y1 = Math.max(...ys) || 1;
    const sx = (x) => L + ((x - x0) / ((x1 - x0) || 1)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / ((y1 - y0) || 1)) * (H - T - B);
    svg.append(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    svg.append(svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    for (let k = 0; k <= 4; k++) {
      const y = y0 + ((y1 - y0) * k) / 4;
      const label = svgEl("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick" });
      label.textContent = y.toFixed(2);
      svg.append(label, svgEl("line", { x1: L, y1: sy(y), x2: W - R, y2: sy(y), class: "grid" }));
    }
    for (const x of [x0, Math.round((x0 + x1) / 2), x1]) {
      const label = svgEl("text", { x: sx(x), y: H - B + 16, "text-anchor": "middle", class: "tick" });
      label.textContent = String(x);
      svg.append(label);
    }
    const xl = svgEl("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis-label" });
    xl.textContent = xLabel;
    const yl = svgEl("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(-90 14 ${(T + H - B) / 2})` });
    yl.textContent = yLabel;
    svg.append(xl, yl);
    series.forEach((s, n) => {
      if (!s.points.length) return;
      const d = s.points.map((p, k) => `${k ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      svg.append(svgEl("path", { d, class: `series series-${n} ${s.className || ""}` }));
      for (const p of s.points.length <= 40 ? s.points : []) svg.append(svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, class: `dot series-${n}` }));
      const key = svgEl("text", { x: W - R - 4, y: T + 14 + 16 * n, "text-anchor": "end", class: `legend series-${n}` });
      key.textContent = s.name;
      svg.append(key);
    });
    return svg;
  }

  return { lineChart };
})();
