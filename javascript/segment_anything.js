// Segment Anything panel: point and box prompts drawn over the uploaded image.
//
// Prompts are kept in image pixels (the pixel under the pointer), never in CSS pixels, and the
// overlay is an SVG whose viewBox is the image's own pixel grid. Resizing the window or zooming
// the page therefore cannot move a dot off its pixel: only the overlay's CSS box is re-fitted.
//
// The same file serves AUTOMATIC1111 (gradio 3), Forge (gradio 4) and the standalone app. Each
// panel is an element with class "sam-panel" and id "<prefix>_panel"; every other element of the
// panel has the id "<prefix>_<part>".
(function () {
    "use strict";
    if (window.samPanel) {
        return;
    }

    const SVG_NS = "http://www.w3.org/2000/svg";
    const DOT_RADIUS_CSS = 6;
    const DRAG_THRESHOLD_CSS = 5;
    // Short: bursts are mostly absorbed by holding clicks made while a preview is in flight
    // (see schedulePreview), so the debounce need not add much to every click.
    const PREVIEW_DEBOUNCE_MS = 40;
    // A preview unanswered for this long is taken as lost (a first ViT-H encode on a CPU is slow).
    const PREVIEW_LOST_MS = 180000;
    // How long a click waits for the server to have decoded a new picture before it is sent anyway.
    const IMAGE_READY_WAIT_MS = 5000;
    const panels = {};

    function appRoot() {
        const app = document.querySelector("gradio-app");
        return (app && app.shadowRoot) || document;
    }

    function part(prefix, name) {
        return appRoot().querySelector("#" + CSS.escape(prefix + "_" + name));
    }

    function panelState(prefix) {
        if (!panels[prefix]) {
            panels[prefix] = {
                prefix: prefix,
                points: [],   // {x, y, label}: integer pixel indices, label 1 positive / 0 negative
                boxes: [],    // {x0, y0, x1, y1}: pixel edges, x1/y1 exclusive
                order: [],    // items in the order they were added, for "undo last"
                img: null,
                src: null,
                width: 0,
                height: 0,
                svg: null,
                drag: null,
                timer: null,
                sentAt: 0,      // when the preview in flight was sent (0: none)
                sentPrompts: null,
                readySrc: null, // the picture the server has decoded (samPanel.imageReady)
                srcSince: 0,
                readyWaiters: [],
                resizeObserver: null,
            };
        }
        return panels[prefix];
    }

    // ----- geometry ---------------------------------------------------------------------------

    // The rectangle, in the img's offsetParent coordinates, where the picture itself is painted
    // (object-fit letterboxing, padding and borders taken out).
    function contentBox(img) {
        const style = getComputedStyle(img);
        const px = (v) => parseFloat(v) || 0;
        const left = px(style.paddingLeft) + px(style.borderLeftWidth);
        const right = px(style.paddingRight) + px(style.borderRightWidth);
        const top = px(style.paddingTop) + px(style.borderTopWidth);
        const bottom = px(style.paddingBottom) + px(style.borderBottomWidth);
        const boxW = img.offsetWidth - left - right;
        const boxH = img.offsetHeight - top - bottom;
        const nw = img.naturalWidth;
        const nh = img.naturalHeight;
        let sx = boxW / nw;
        let sy = boxH / nh;
        const fit = style.objectFit;
        if (fit === "contain" || fit === "scale-down") {
            let s = Math.min(sx, sy);
            if (fit === "scale-down") {
                s = Math.min(s, 1);
            }
            sx = sy = s;
        } else if (fit === "cover") {
            sx = sy = Math.max(sx, sy);
        } else if (fit === "none") {
            sx = sy = 1;
        }
        const w = nw * sx;
        const h = nh * sy;
        return {
            left: img.offsetLeft + left + (boxW - w) / 2,
            top: img.offsetTop + top + (boxH - h) / 2,
            width: w,
            height: h,
        };
    }

    // Pointer position -> image pixel coordinates (floats), through the overlay's on-screen box,
    // which also accounts for page zoom and CSS transforms.
    function toImage(st, event) {
        const rect = st.svg.getBoundingClientRect();
        return {
            x: ((event.clientX - rect.left) / rect.width) * st.width,
            y: ((event.clientY - rect.top) / rect.height) * st.height,
        };
    }

    function insideImage(st, p) {
        return p.x >= 0 && p.y >= 0 && p.x < st.width && p.y < st.height;
    }

    // ----- drawing ----------------------------------------------------------------------------

    function svgElement(name, attributes) {
        const element = document.createElementNS(SVG_NS, name);
        for (const key in attributes) {
            element.setAttribute(key, attributes[key]);
        }
        return element;
    }

    function ensureOverlay(st) {
        const img = st.img;
        const parent = img.parentElement;
        if (getComputedStyle(parent).position === "static") {
            parent.style.position = "relative";
        }
        if (!st.svg || st.svg.parentElement !== parent) {
            if (st.svg) {
                st.svg.remove();
            }
            st.svg = svgElement("svg", {class: "sam-overlay", id: st.prefix + "_overlay_svg", preserveAspectRatio: "none"});
            parent.appendChild(st.svg);
        }
        return st.svg;
    }

    function render(st) {
        if (!st.img || !st.img.isConnected || !st.width) {
            return;
        }
        const svg = ensureOverlay(st);
        const box = contentBox(st.img);
        svg.style.left = box.left + "px";
        svg.style.top = box.top + "px";
        svg.style.width = box.width + "px";
        svg.style.height = box.height + "px";
        svg.setAttribute("viewBox", "0 0 " + st.width + " " + st.height);
        const unit = box.width > 0 ? st.width / box.width : 1; // image pixels per CSS pixel
        while (svg.firstChild) {
            svg.removeChild(svg.firstChild);
        }
        st.boxes.forEach(function (b, index) {
            svg.appendChild(svgElement("rect", {
                class: "sam-box", "data-index": String(index),
                x: b.x0, y: b.y0, width: b.x1 - b.x0, height: b.y1 - b.y0,
                "stroke-width": 2 * unit,
            }));
        });
        if (st.drag && st.drag.moved) {
            const d = st.drag;
            svg.appendChild(svgElement("rect", {
                class: "sam-box sam-box-pending",
                x: Math.min(d.x0, d.x1), y: Math.min(d.y0, d.y1),
                width: Math.abs(d.x1 - d.x0), height: Math.abs(d.y1 - d.y0),
                "stroke-width": 2 * unit,
            }));
        }
        st.points.forEach(function (p, index) {
            const dot = svgElement("circle", {
                class: "sam-dot " + (p.label === 1 ? "sam-dot-positive" : "sam-dot-negative"),
                "data-index": String(index), "data-x": String(p.x), "data-y": String(p.y),
                cx: p.x + 0.5, cy: p.y + 0.5, r: DOT_RADIUS_CSS * unit, "stroke-width": 2 * unit,
            });
            const title = svgElement("title", {});
            title.textContent = (p.label === 1 ? "positive" : "negative") + " point (" + p.x + ", " + p.y + "), click to remove";
            dot.appendChild(title);
            dot.addEventListener("mousedown", function (event) {
                event.stopPropagation();
                event.preventDefault();
            });
            dot.addEventListener("click", function (event) {
                event.stopPropagation();
                event.preventDefault();
                removeItem(st, p);
            });
            dot.addEventListener("contextmenu", function (event) {
                event.stopPropagation();
                event.preventDefault();
                removeItem(st, p);
            });
            svg.appendChild(dot);
        });
    }

    // ----- prompt editing ---------------------------------------------------------------------

    function changed(st) {
        render(st);
        if (st.points.length || st.boxes.length) {
            schedulePreview(st);
        }
    }

    function addPoint(st, p, label) {
        const point = {x: Math.floor(p.x), y: Math.floor(p.y), label: label};
        st.points.push(point);
        st.order.push(point);
        changed(st);
    }

    function addBox(st, a, b) {
        const clampX = (v) => Math.max(0, Math.min(st.width, v));
        const clampY = (v) => Math.max(0, Math.min(st.height, v));
        const box = {
            x0: clampX(Math.floor(Math.min(a.x, b.x))),
            y0: clampY(Math.floor(Math.min(a.y, b.y))),
            x1: clampX(Math.floor(Math.max(a.x, b.x)) + 1),
            y1: clampY(Math.floor(Math.max(a.y, b.y)) + 1),
        };
        if (box.x1 - box.x0 < 2 || box.y1 - box.y0 < 2) {
            return;
        }
        st.boxes.push(box);
        st.order.push(box);
        changed(st);
    }

    function removeItem(st, item) {
        st.points = st.points.filter((p) => p !== item);
        st.boxes = st.boxes.filter((b) => b !== item);
        st.order = st.order.filter((o) => o !== item);
        changed(st);
    }

    function resetPrompts(st) {
        st.points = [];
        st.boxes = [];
        st.order = [];
        st.drag = null;
        render(st);
    }

    function autoPreviewEnabled(st) {
        const box = part(st.prefix, "auto_preview");
        const input = box && (box.tagName === "INPUT" ? box : box.querySelector("input[type=checkbox]"));
        return Boolean(input && input.checked);
    }

    function promptsJson(st) {
        return JSON.stringify({
            width: st.width,
            height: st.height,
            points: st.points.map((p) => [p.x + 0.5, p.y + 0.5, p.label]),
            boxes: st.boxes.map((b) => [b.x0, b.y0, b.x1, b.y1]),
        });
    }

    function previewInFlight(st) {
        return st.sentAt > 0 && Date.now() - st.sentAt < PREVIEW_LOST_MS;
    }

    // Clicks are debounced, and while a preview is being computed later clicks only mark the
    // prompts as changed: when the answer arrives (previewDone) one more preview is sent for the
    // prompts as they are then. So a burst of clicks costs at most two decoder runs, and the
    // masks shown always end up matching the dots.
    function schedulePreview(st) {
        if (!autoPreviewEnabled(st)) {
            return;
        }
        clearTimeout(st.timer);
        st.timer = setTimeout(() => sendPreview(st), PREVIEW_DEBOUNCE_MS);
    }

    function sendPreview(st) {
        st.timer = null;
        if (previewInFlight(st)) {
            return; // previewDone sends the newest prompts
        }
        const button = part(st.prefix, "preview");
        if (button) {
            button.click();
        }
    }

    // Resolves once the server holds the picture shown (the preview reads it from there), or after
    // IMAGE_READY_WAIT_MS, so a picture change the server never saw cannot block previews.
    function imageOnServer(st) {
        if (st.readySrc === st.src) {
            return Promise.resolve();
        }
        return new Promise(function (resolve) {
            const wait = Math.max(0, IMAGE_READY_WAIT_MS - (Date.now() - st.srcSince));
            const timer = setTimeout(resolve, wait);
            st.readyWaiters.push(function () {
                clearTimeout(timer);
                resolve();
            });
        });
    }

    function releaseIfOnServer(st) {
        if (st.readySrc === st.src) {
            const waiters = st.readyWaiters;
            st.readyWaiters = [];
            waiters.forEach((resolve) => resolve());
        }
    }

    // ----- binding ----------------------------------------------------------------------------

    function onMouseDown(st, event) {
        if (event.button !== 0 || !st.svg) {
            return;
        }
        event.preventDefault(); // no native image drag
        event.stopPropagation();
        const p = toImage(st, event);
        if (!insideImage(st, p)) {
            return;
        }
        st.drag = {x0: p.x, y0: p.y, x1: p.x, y1: p.y, cx: event.clientX, cy: event.clientY, moved: false};
    }

    function onMouseMove(st, event) {
        if (!st.drag) {
            return;
        }
        const p = toImage(st, event);
        st.drag.x1 = p.x;
        st.drag.y1 = p.y;
        if (Math.hypot(event.clientX - st.drag.cx, event.clientY - st.drag.cy) > DRAG_THRESHOLD_CSS) {
            st.drag.moved = true;
        }
        if (st.drag.moved) {
            render(st);
        }
    }

    function onMouseUp(st, event) {
        const drag = st.drag;
        if (!drag) {
            return;
        }
        st.drag = null;
        if (drag.moved) {
            addBox(st, {x: drag.x0, y: drag.y0}, toImage(st, event));
        } else {
            addPoint(st, {x: drag.x0, y: drag.y0}, 1);
        }
    }

    function onContextMenu(st, event) {
        event.preventDefault();
        event.stopPropagation();
        const p = toImage(st, event);
        if (insideImage(st, p)) {
            addPoint(st, p, 0);
        }
    }

    function attach(st, img) {
        st.img = img;
        img.draggable = false;
        img.classList.add("sam-input-img");
        img.addEventListener("mousedown", (e) => onMouseDown(st, e), true);
        img.addEventListener("click", (e) => { e.preventDefault(); e.stopPropagation(); }, true);
        img.addEventListener("contextmenu", (e) => onContextMenu(st, e), true);
        img.addEventListener("dragstart", (e) => e.preventDefault());
        if (window.ResizeObserver) {
            if (st.resizeObserver) {
                st.resizeObserver.disconnect();
            }
            st.resizeObserver = new ResizeObserver(() => render(st));
            st.resizeObserver.observe(img);
            if (img.parentElement) {
                st.resizeObserver.observe(img.parentElement);
            }
        }
    }

    function bindPanel(prefix) {
        const st = panelState(prefix);
        const container = part(prefix, "input_image");
        const img = container && container.querySelector("img");
        if (!img || !img.getAttribute("src")) {
            if (st.img) {
                resetPrompts(st);
                if (st.svg) {
                    st.svg.remove();
                }
                st.svg = null;
                st.img = null;
                st.src = null;
                st.width = 0;
            }
            return;
        }
        if (img !== st.img) {
            attach(st, img);
        }
        const src = img.getAttribute("src");
        if (src !== st.src) {
            // A new picture: prompts of the old one mean nothing on it.
            st.src = src;
            st.srcSince = Date.now();
            st.width = 0;
            releaseIfOnServer(st);
            resetPrompts(st);
        }
        if (!st.width && img.complete && img.naturalWidth) {
            st.width = img.naturalWidth;
            st.height = img.naturalHeight;
            render(st);
        } else if (!st.width) {
            img.addEventListener("load", () => scan(), {once: true});
        }
    }

    let scanQueued = false;

    function scan() {
        scanQueued = false;
        appRoot().querySelectorAll(".sam-panel").forEach(function (panel) {
            if (panel.id && panel.id.endsWith("_panel")) {
                bindPanel(panel.id.slice(0, -"_panel".length));
            }
        });
    }

    function queueScan() {
        if (!scanQueued) {
            scanQueued = true;
            requestAnimationFrame(scan);
        }
    }

    window.addEventListener("mousemove", function (event) {
        for (const prefix in panels) {
            onMouseMove(panels[prefix], event);
        }
    });
    window.addEventListener("mouseup", function (event) {
        for (const prefix in panels) {
            onMouseUp(panels[prefix], event);
        }
    });
    window.addEventListener("resize", function () {
        for (const prefix in panels) {
            render(panels[prefix]);
        }
    });

    function start() {
        new MutationObserver(queueScan).observe(document.body || document.documentElement, {
            childList: true, subtree: true, attributes: true, attributeFilter: ["src"],
        });
        const app = document.querySelector("gradio-app");
        if (app && app.shadowRoot) {
            new MutationObserver(queueScan).observe(app.shadowRoot, {
                childList: true, subtree: true, attributes: true, attributeFilter: ["src"],
            });
        }
        queueScan();
    }

    // ----- what the gradio events call --------------------------------------------------------

    window.samPanel = {
        // The Preview button's browser-side step: put the prompts into the inputs it sends.
        // Async: gradio awaits it, so a click made right after an upload waits for the picture.
        collect: async function (prefix, args, promptIndex, inputCount) {
            const st = panelState(prefix);
            const values = Array.from(args).slice(0, inputCount);
            st.sentAt = Date.now();
            await imageOnServer(st);
            values[promptIndex] = promptsJson(st);
            st.sentPrompts = values[promptIndex];
            st.previewsSent = (st.previewsSent || 0) + 1;
            return values;
        },
        // Runs when the server has decoded a new picture: clicks made before that are previewed now.
        imageReady: function (prefix) {
            const st = panelState(prefix);
            const container = part(prefix, "input_image");
            const img = container && container.querySelector("img");
            st.readySrc = img ? img.getAttribute("src") : null;
            releaseIfOnServer(st);
            return [];
        },
        // Runs when a preview has been answered (success or failure).
        previewDone: function (prefix) {
            const st = panelState(prefix);
            const sent = st.sentPrompts;
            st.sentAt = 0;
            st.sentPrompts = null;
            st.previewsAnswered = (st.previewsAnswered || 0) + 1;
            if (sent !== null && st.timer === null && (st.points.length || st.boxes.length)
                    && promptsJson(st) !== sent) {
                schedulePreview(st);
            }
            return [];
        },
        undo: function (prefix) {
            const st = panelState(prefix);
            const last = st.order[st.order.length - 1];
            if (last) {
                removeItem(st, last);
            }
            return [];
        },
        clear: function (prefix) {
            resetPrompts(panelState(prefix));
            return [];
        },
        // For tests and the benchmark: the prompts as the panel holds them.
        prompts: function (prefix) {
            const st = panelState(prefix);
            return {width: st.width, height: st.height, points: st.points.slice(), boxes: st.boxes.slice(),
                    previewsSent: st.previewsSent || 0, previewsAnswered: st.previewsAnswered || 0};
        },
        switchToInpaintUpload: function () {
            if (typeof switch_to_img2img_tab === "function") {
                switch_to_img2img_tab(4);
            }
            // The host switches tabs but leaves the page scrolled where the send button was, often
            // far below the inpaint images: bring the picture that was just sent into view.
            setTimeout(function () {
                const root = typeof gradioApp === "function" ? gradioApp() : document;
                const target = root.querySelector("#img_inpaint_base");
                if (target) {
                    target.scrollIntoView({block: "start"});
                }
            }, 100);
            return [];
        },
        rescan: scan,
    };

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
