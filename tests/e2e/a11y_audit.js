// Run in the page by tests/e2e/browser_helpers.py (assert_accessible).
() => {
  const problems = [];
  const visible = (el) => {
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || style.display === "none") return false;
    const rect = el.getBoundingClientRect();
    return rect.width > 1 && rect.height > 1;
  };
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
      (el.className && typeof el.className === "string" ? "." + el.className.split(" ").join(".") : "");
  const scope = document.querySelector("dialog[open]") || document;
  for (const el of scope.querySelectorAll("input, select, textarea, button, a[href], [role=img], svg")) {
    if (!visible(el)) continue;
    let name = "";
    if (el.getAttribute("aria-labelledby")) {
      name = el.getAttribute("aria-labelledby").split(/\s+/)
        .map((id) => document.getElementById(id)?.textContent ?? "").join(" ");
    }
    name ||= el.getAttribute("aria-label") || "";
    if (!name && el.labels) name = [...el.labels].map((l) => l.textContent).join(" ");
    if (!name && (el.tagName === "BUTTON" || el.tagName === "A")) name = el.textContent;
    if (!name.trim()) problems.push(`no accessible name: ${describe(el)}`);
  }
  const parse = (c) => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return [0, 0, 0, 0];
    const p = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, bottom) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat([1]);
  };
  const background = (el) => {
    const layers = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const style = getComputedStyle(node);
      if (style.backgroundImage !== "none") return null; // a gradient: not computable here
      const color = parse(style.backgroundColor);
      if (color[3] > 0) layers.push(color);
      if (color[3] >= 1) break;
    }
    let result = [255, 255, 255, 1];
    for (const layer of layers.reverse()) result = over(layer, result);
    return result;
  };
  const lum = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  let checked = 0;
  const walker = document.createTreeWalker(scope === document ? document.body : scope, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let text = walker.nextNode(); text; text = walker.nextNode()) {
    const el = text.parentElement;
    if (!text.textContent.trim() || !el || seen.has(el) || !visible(el)) continue;
    if (el.closest("svg") && el.tagName !== "text") continue;
    if (el.closest(".visually-hidden") || el.closest("[disabled]")) continue;
    seen.add(el);
    const style = getComputedStyle(el);
    const bg = background(el);
    if (bg === null) { problems.push(`text on a gradient: ${describe(el)}`); continue; }
    const fgRaw = el.tagName === "text" ? parse(style.fill) : parse(style.color);
    const fg = over(fgRaw, bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize);
    const bold = Number(style.fontWeight) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    checked++;
    if (ratio < (large ? 3 : 4.5)) {
      problems.push(`contrast ${ratio.toFixed(2)} for "${text.textContent.trim().slice(0, 40)}" in ${describe(el)}`);
    }
  }
  return {problems, checked};
}
