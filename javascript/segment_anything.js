// Segment Anything panel: point and box prompts drawn over the uploaded image.
//
// Prompts are kept in image pixels (the pixel under the pointer), never in CSS pixels, and the
// overlay is an SVG whose viewBox is the image's own pixel grid. Resizing the window or zooming
// the page therefore cannot move a dot off its pixel: only the overlay's CSS box is re-fitted.
//
// The candidate masks arrive as packed bits (the hidden "<prefix>_masks_data" textbox, read by
// previewDone); the chosen one is drawn on a canvas between the picture and the SVG, translucent with
// an outline, and all three as thumbnails in the "<prefix>_candidates" strip. The strip, the
// "<prefix>_choice" radio and the canvas always show the same candidate.
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
    // (see schedulePreview), so the debounce need not add much to a click in a burst.
    const PREVIEW_DEBOUNCE_MS = 40;
    // A click made this long after the last preview was sent starts a burst, if any: it is sent at
    // once, without the debounce, so a single click waits for nothing but the decoder.
    const PREVIEW_QUIET_MS = 150;
    // A click's overlay, mask and cut-out are asked for once its mask is on the canvas and no other
    // click came for this long: a quick series of clicks builds only the last one's, and the
    // server's decoder does not share the CPU with outputs nobody will see.
    const OUTPUTS_QUIET_MS = 200;
    // A preview unanswered for this long is taken as lost (a first ViT-H encode on a CPU is slow).
    const PREVIEW_LOST_MS = 180000;
    // How long a click waits for the server to have decoded a new picture before it is sent anyway.
    const IMAGE_READY_WAIT_MS = 5000;
    // The chosen mask on the canvas: a translucent fill, and an opaque outline so its edge reads on
    // any picture.
    const MASK_FILL = [30, 144, 255, 130];
    const MASK_OUTLINE = [255, 255, 255, 255];
    // The mask under the pointer (hover preview): asked for once the pointer rests this long, and
    // only while clicks are answered within HOVER_SLOW_MS (a slower decoder could not follow it).
    const HOVER_DEBOUNCE_MS = 90;
    const HOVER_SLOW_MS = 400;
    const HOVER_LOST_MS = 10000;  // a hover unanswered for this long is taken as lost
    const HOVER_FILL = [30, 144, 255, 80];  // the chosen mask's colour, fainter
    const HOVER_OUTLINE = [255, 255, 255, 190];
    const ENCODING_TEXT = "Encoding the picture\u2026 (first click only)";
    const THUMB_WIDTH = 240;   // canvas pixels of a candidate thumbnail (shown at about half that)
    const THUMB_HEIGHT = 180;
    const OUTPUTS = ["mask", "cutout", "overlay"];
    // How long a held download waits for its full-size file (a 4000x3000 cut-out on a busy CPU).
    const FULL_OUTPUTS_WAIT_MS = 300000;
    // How long, once they were sent, the full-size outputs may take to show in the page.
    const FULL_OUTPUTS_SHOW_MS = 15000;
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
                history: [],  // actions, newest last, for "undo": {op: "add"|"remove"|"clear", ...}
                img: null,
                src: null,
                width: 0,
                height: 0,
                svg: null,
                drag: null,
                timer: null,
                outputsTimer: null, // a click's outputs, asked for when it fires (OUTPUTS_QUIET_MS)
                sentAt: 0,      // when the preview in flight was sent (0: none)
                sentPrompts: null,
                readySrc: null, // the picture the server has decoded (samPanel.imageReady)
                srcSince: 0,
                readyWaiters: [],
                resizeObserver: null,
                name: "",       // the uploaded file's name, for the download names
                data: null,     // the last answer: {token, width, height, maskWidth, maskHeight, scores, best, masks}
                layers: [],     // per candidate: a canvas with the tinted mask, at mask resolution
                thumbs: [],     // per candidate: the strip's thumbnail (data URL)
                selected: 0,
                canvas: null,   // the chosen mask, over the picture
                masksDrawn: 0,
                drawToken: 0,
                thumbBase: null, // {src, canvas}: the picture at thumbnail size
                hoverCanvas: null,
                hover: {timer: null, point: null, seq: 0, dropBelow: 0, inFlight: false, sentAt: 0, again: false},
                lastClickMs: 0,  // how long the last click took to be answered
                hoversDrawn: 0,
                encodedSrc: null, // the picture whose embedding the server holds (samPanel.imageEncoded)
                encodingNote: null, // "Encoding the picture..." over the canvas while a click pays for it
                encodingShown: 0,
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

    // A new, empty canvas in ``parent`` in place of ``old`` (removed, if any).
    function layerCanvas(old, parent, className, id) {
        if (old) {
            old.remove();
        }
        const canvas = document.createElement("canvas");
        canvas.className = className;
        canvas.id = id;
        canvas.width = 1;
        canvas.height = 1;
        parent.appendChild(canvas);
        return canvas;
    }

    function ensureOverlay(st) {
        const img = st.img;
        const parent = img.parentElement;
        if (getComputedStyle(parent).position === "static") {
            parent.style.position = "relative";
        }
        // The chosen mask, then the mask under the pointer, then the SVG on top.
        if (!st.canvas || st.canvas.parentElement !== parent) {
            st.canvas = layerCanvas(st.canvas, parent, "sam-mask-canvas", st.prefix + "_mask_canvas");
            drawMask(st);
        }
        if (!st.hoverCanvas || st.hoverCanvas.parentElement !== parent) {
            st.hoverCanvas = layerCanvas(st.hoverCanvas, parent, "sam-hover-canvas", st.prefix + "_hover_canvas");
        }
        if (!st.svg || st.svg.parentElement !== parent) {
            if (st.svg) {
                st.svg.remove();
            }
            st.svg = svgElement("svg", {class: "sam-overlay", id: st.prefix + "_overlay_svg", preserveAspectRatio: "none"});
            parent.appendChild(st.svg);
        }
        if (!st.encodingNote || st.encodingNote.parentElement !== parent) {
            const shown = Boolean(st.encodingNote && !st.encodingNote.hidden);
            if (st.encodingNote) {
                st.encodingNote.remove();
            }
            // Absolutely placed over the picture (style.css): showing it moves nothing on the page.
            st.encodingNote = document.createElement("div");
            st.encodingNote.className = "sam-encoding";
            st.encodingNote.id = st.prefix + "_encoding";
            st.encodingNote.setAttribute("role", "status");
            st.encodingNote.textContent = ENCODING_TEXT;
            st.encodingNote.hidden = !shown;
            parent.appendChild(st.encodingNote);
        }
        return st.svg;
    }

    // The first click on a picture waits for its encoder (10-40 s on a CPU): say so over the
    // canvas from the moment the click is sent until its masks arrive. Later clicks run the
    // decoder only and show nothing.
    function showEncoding(st, shown) {
        if (shown && st.img && st.img.isConnected && st.width) {
            ensureOverlay(st);
        }
        const note = st.encodingNote;
        if (!note || note.hidden === !shown) {
            return;
        }
        note.hidden = !shown;
        if (shown) {
            st.encodingShown += 1;
        }
    }

    // A click on a dot or on a box's handle removes it, and never reaches the picture below.
    function removable(element, st, item) {
        element.addEventListener("mousedown", function (event) {
            event.stopPropagation();
            event.preventDefault();
        });
        const remove = function (event) {
            event.stopPropagation();
            event.preventDefault();
            removeItem(st, item);
        };
        element.addEventListener("click", remove);
        element.addEventListener("contextmenu", remove);
        return element;
    }

    function render(st) {
        if (!st.img || !st.img.isConnected || !st.width) {
            return;
        }
        const svg = ensureOverlay(st);
        const box = contentBox(st.img);
        [svg, st.canvas, st.hoverCanvas].forEach(function (layer) {
            layer.style.left = box.left + "px";
            layer.style.top = box.top + "px";
            layer.style.width = box.width + "px";
            layer.style.height = box.height + "px";
        });
        svg.setAttribute("viewBox", "0 0 " + st.width + " " + st.height);
        const unit = box.width > 0 ? st.width / box.width : 1; // image pixels per CSS pixel
        while (svg.firstChild) {
            svg.removeChild(svg.firstChild);
        }
        st.boxes.forEach(function (b, index) {
            const rect = removable(svgElement("rect", {
                class: "sam-box", "data-index": String(index),
                x: b.x0, y: b.y0, width: b.x1 - b.x0, height: b.y1 - b.y0,
                "stroke-width": 2 * unit,
            }), st, b);
            const title = svgElement("title", {});
            title.textContent = "box (" + b.x0 + ", " + b.y0 + ") to (" + b.x1 + ", " + b.y1 + "), click its edge or its \u00d7 to remove";
            rect.appendChild(title);
            svg.appendChild(rect);
            // The handle sits on the corner, inside the picture, so it can always be reached.
            const r = 8 * unit;
            const cx = Math.max(r, Math.min(st.width - r, b.x1));
            const cy = Math.max(r, Math.min(st.height - r, b.y0));
            const handle = removable(svgElement("g", {class: "sam-box-remove", "data-index": String(index)}), st, b);
            // A disc drawn as a path: every <circle> in the overlay is a point (tests count them).
            handle.appendChild(svgElement("path", {
                class: "sam-box-remove-disc", "stroke-width": 1.5 * unit,
                d: "M" + (cx - r) + " " + cy + "a" + r + " " + r + " 0 1 0 " + 2 * r + " 0a" + r + " " + r + " 0 1 0 " + (-2 * r) + " 0",
            }));
            const d = 3.5 * unit;
            handle.appendChild(svgElement("path", {
                class: "sam-box-remove-cross",
                d: "M" + (cx - d) + " " + (cy - d) + "L" + (cx + d) + " " + (cy + d) + "M" + (cx + d) + " " + (cy - d) + "L" + (cx - d) + " " + (cy + d),
                "stroke-width": 2 * unit,
            }));
            svg.appendChild(handle);
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
            const dot = removable(svgElement("circle", {
                class: "sam-dot " + (p.label === 1 ? "sam-dot-positive" : "sam-dot-negative"),
                "data-index": String(index), "data-x": String(p.x), "data-y": String(p.y),
                cx: p.x + 0.5, cy: p.y + 0.5, r: DOT_RADIUS_CSS * unit, "stroke-width": 2 * unit,
            }), st, p);
            const title = svgElement("title", {});
            title.textContent = (p.label === 1 ? "positive" : "negative") + " point (" + p.x + ", " + p.y + "), click to remove";
            dot.appendChild(title);
            svg.appendChild(dot);
        });
    }

    // ----- candidate masks --------------------------------------------------------------------

    // One candidate as the server packs it (handlers.packed_mask): base64 of the zlib-compressed
    // bits of its pixels, row by row, the first pixel in a byte's high bit. Returns one byte per
    // pixel, 1 inside. Synchronous (zlib_inflate.js), with no image decode and no canvas read-back:
    // this runs between an answer and its mask on screen.
    function unpackMask(packed, width, height) {
        let bits = null;
        try {
            const text = atob(packed);
            const compressed = new Uint8Array(text.length);
            for (let i = 0; i < text.length; i++) {
                compressed[i] = text.charCodeAt(i);
            }
            bits = window.samZlibInflate(compressed, Math.ceil(width * height / 8));
        } catch (error) {
            throw new Error("a candidate mask could not be decoded (" + error.message + ")");
        }
        const inside = new Uint8Array(width * height);
        for (let i = 0; i < inside.length; i++) {
            inside[i] = (bits[i >> 3] >> (7 - (i & 7))) & 1;
        }
        return inside;
    }

    // An [r, g, b, a] colour as one pixel of a Uint32Array view of canvas bytes (little-endian
    // on every platform browsers run on: bytes r, g, b, a in memory).
    function pixelWord(colour) {
        return ((colour[3] << 24) | (colour[2] << 16) | (colour[1] << 8) | colour[0]) >>> 0;
    }

    // Pixels of the last tinted layer: putImageData copies them into the canvas, so one buffer
    // serves every layer of a size (a click tints up to three masks of up to 4 MB each, and
    // fresh buffers each time kept the garbage collector busy between a click and its mask).
    let tintScratch = null;

    // The mask (one byte per pixel, 1 inside) as a canvas of its size: translucent fill inside,
    // opaque outline on its edge pixels, transparent outside. `reuse`: a canvas of an answer no
    // longer shown, drawn over instead of a new one. This runs on every click, on up to 1024x1024
    // pixels, between the answer and the mask on screen: 32-bit words, not bytes, and the edge
    // test without branches (an inside pixel is inside the outline when its four neighbours are
    // inside too; a neighbour past the picture's border counts as the pixel itself).
    function tintedLayer(inside, width, height, fill, outline, reuse) {
        const fillWord = pixelWord(fill || MASK_FILL);
        const outlineWord = pixelWord(outline || MASK_OUTLINE);
        if (!tintScratch || tintScratch.length !== width * height) {
            tintScratch = new Uint32Array(width * height);
        } else {
            tintScratch.fill(0);  // transparent
        }
        const out = tintScratch;
        const last = width - 1;
        for (let y = 0; y < height; y++) {
            const row = y * width;
            const up = y > 0 ? row - width : row;
            const down = y < height - 1 ? row + width : row;
            // the row's left neighbour, pixel and right neighbour, carried along the row
            let left = inside[row];
            let pixel = left;
            for (let x = 0; x < width; x++) {
                const right = x < last ? inside[row + x + 1] : pixel;
                if (pixel !== 0) {
                    out[row + x] = (left & right & inside[up + x] & inside[down + x]) ? fillWord : outlineWord;
                }
                left = pixel;
                pixel = right;
            }
        }
        let layer = reuse;
        if (!layer || layer.width !== width || layer.height !== height) {
            layer = document.createElement("canvas");
            layer.width = width;
            layer.height = height;
        }
        layer.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(out.buffer), width, height), 0, 0);
        return layer;
    }

    function drawMask(st) {
        const canvas = st.canvas;
        if (!canvas) {
            return;
        }
        const layer = st.data ? st.layers[st.selected] : null;
        if (!layer) {
            canvas.width = 1;
            canvas.height = 1;
            canvas.dataset.drawn = "";
            return;
        }
        canvas.width = layer.width;
        canvas.height = layer.height;
        canvas.getContext("2d").drawImage(layer, 0, 0);
        canvas.dataset.drawn = st.data.token + ":" + st.selected;
    }

    function strip(st) {
        const container = part(st.prefix, "candidates");
        if (!container) {
            return null;
        }
        let element = container.querySelector(".sam-strip");
        if (!element) {
            element = document.createElement("div");
            element.className = "sam-strip";
            container.appendChild(element);
        }
        return element;
    }

    // The picture at thumbnail size, made once per picture: scaling a 4000x3000 photo down for
    // each of three thumbnails on every click cost more than drawing the mask.
    function thumbnailBase(st) {
        if (st.thumbBase && st.thumbBase.src === st.src) {
            return st.thumbBase.canvas;
        }
        const canvas = document.createElement("canvas");
        const scale = Math.min(THUMB_WIDTH / st.width, THUMB_HEIGHT / st.height);
        canvas.width = Math.max(1, Math.round(st.width * scale));
        canvas.height = Math.max(1, Math.round(st.height * scale));
        if (st.img && st.img.complete && st.img.naturalWidth) {
            canvas.getContext("2d").drawImage(st.img, 0, 0, canvas.width, canvas.height);
            st.thumbBase = {src: st.src, canvas: canvas};
        }
        return canvas;
    }

    // The picture with one candidate on it, whole (letterboxed, never cropped), as a small JPEG.
    function thumbnail(st, layer) {
        const base = thumbnailBase(st);
        const canvas = document.createElement("canvas");
        canvas.width = base.width;
        canvas.height = base.height;
        const context = canvas.getContext("2d");
        context.drawImage(base, 0, 0);
        context.drawImage(layer, 0, 0, canvas.width, canvas.height);
        return canvas.toDataURL("image/jpeg", 0.85);
    }

    // Three slots, always there (empty before the first answer), so the strip never changes size.
    function renderStrip(st) {
        const element = strip(st);
        if (!element) {
            return;
        }
        const data = st.data;
        const count = data ? data.scores.length : 0;
        element.innerHTML = "";
        for (let index = 0; index < 3; index++) {
            const slot = document.createElement(index < count ? "button" : "div");
            slot.className = "sam-candidate" + (index < count ? "" : " sam-candidate-empty");
            slot.dataset.index = String(index);
            const number = document.createElement("span");
            number.className = "sam-candidate-number";
            number.textContent = String(index + 1);
            slot.appendChild(number);
            const caption = document.createElement("span");
            caption.className = "sam-candidate-caption";
            caption.textContent = "Mask " + (index + 1);
            if (index < count) {
                const selected = index === st.selected;
                slot.type = "button";
                slot.classList.toggle("sam-candidate-selected", selected);
                slot.setAttribute("aria-pressed", selected ? "true" : "false");
                slot.title = "Use Mask " + (index + 1);
                const img = document.createElement("img");
                img.alt = "Mask " + (index + 1);
                img.src = st.thumbs[index];
                slot.appendChild(img);
                // The number is on the badge; the caption has room for the score alone.
                caption.textContent = "score " + data.scores[index].toFixed(3);
                slot.addEventListener("click", (event) => {
                    event.preventDefault();
                    select(st, index, true);
                });
            }
            slot.appendChild(caption);
            element.appendChild(slot);
        }
    }

    function radioInputs(st) {
        const radio = part(st.prefix, "choice");
        return radio ? Array.from(radio.querySelectorAll("input[type=radio]")) : [];
    }

    // The one place the selection changes: canvas, strip and radio follow. ``pushToRadio``: also
    // check the radio, whose input event makes the server build the outputs for this candidate.
    function select(st, index, pushToRadio) {
        if (!st.data || index < 0 || index >= st.layers.length || !st.layers[index]) {
            return;
        }
        st.selected = index;
        drawMask(st);
        renderStrip(st);
        if (pushToRadio) {
            const input = radioInputs(st)[index];
            if (input && !input.checked) {
                input.click();
            }
        }
    }

    function showCandidates(st, json) {
        let data = null;
        try {
            data = json ? JSON.parse(json) : null;
        } catch (error) {
            data = null;
        }
        if (!data || !data.masks || !data.masks.length) {
            forgetCandidates(st);
            return;
        }
        if (st.data && st.data.token === data.token) {
            return;
        }
        const token = ++st.drawToken;
        const selected = Math.min(Math.max(0, data.best || 0), data.masks.length - 1);
        // The chosen mask first, decoded and drawn on the canvas: that is what the user waits for.
        // The other candidates' masks, layers and the strip's thumbnails follow.
        let chosen = null;
        try {
            chosen = unpackMask(data.masks[selected], data.maskWidth, data.maskHeight);
        } catch (error) {
            console.error("Segment Anything:", error.message);
            forgetCandidates(st);  // nothing to draw: no candidates are shown rather than old ones
            return;
        }
        const spare = st.layers;  // the canvases of the answer this one replaces
        st.data = data;
        st.selected = selected;
        st.layers = data.masks.map(() => null);
        st.layers[selected] = tintedLayer(chosen, data.maskWidth, data.maskHeight, null, null, spare[selected]);
        st.thumbs = [];
        render(st);
        drawMask(st);
        st.masksDrawn += 1;
        // Click (the prompt change) -> its masks drawn into the canvas, as the page saw it.
        const drawnAt = performance.now();
        st.lastDrawnMs = st.changedAt ? drawnAt - st.changedAt : null;
        // Where that time went: the click until gradio sends its request, the request until the
        // answer reaches this script (server + transfer + gradio's own updates), the drawing.
        st.lastSplit = st.changedAt && st.requestAt >= st.changedAt && st.answeredAt >= st.requestAt
            ? {beforeRequest: st.requestAt - st.changedAt, request: st.answeredAt - st.requestAt,
               drawing: drawnAt - st.answeredAt, serverMs: data.serverMs || null}
            : null;
        setTimeout(function () {
            if (token !== st.drawToken) {
                return;
            }
            try {
                st.layers = st.layers.map((layer, index) => layer
                    || tintedLayer(unpackMask(data.masks[index], data.maskWidth, data.maskHeight),
                                   data.maskWidth, data.maskHeight, null, null, spare[index]));
            } catch (error) {
                console.error("Segment Anything:", error.message);
                return;  // the chosen one is drawn; the strip stays without thumbnails
            }
            st.thumbs = st.layers.map((layer) => thumbnail(st, layer));
            drawMask(st);  // the selection may have changed meanwhile
            renderStrip(st);
        }, 0);
    }

    // The candidates on screen no longer belong to the prompts (or the picture): take them away.
    function forgetCandidates(st) {
        st.drawToken += 1;
        st.pendingDownload = null;
        st.data = null;
        st.layers = [];
        st.thumbs = [];
        st.selected = 0;
        drawMask(st);
        renderStrip(st);
    }

    // ...and on the server too: its outputs could otherwise still be downloaded or sent.
    function resetOutputs(st) {
        forgetCandidates(st);
        pressButton(st, "reset");
    }

    // A button of the panel, pressed by the script: the hidden ones (panel.py) start server steps.
    function pressButton(st, name) {
        const button = part(st.prefix, name);
        if (button) {
            button.click();
        }
    }

    // ----- downloads --------------------------------------------------------------------------

    function pictureStem(st) {
        const base = (st.name || "").split(/[\\/]/).pop();
        const dot = base.lastIndexOf(".");
        const stem = (dot > 0 ? base.slice(0, dot) : base).replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+|[._]+$/g, "");
        return stem.slice(0, 80) || "picture";
    }

    // gradio 3 names every image download "image"; gradio 4 uses the file's name, which the
    // server already sets. Either way the link says "<picture>_mask.png" and so on.
    function nameDownloads(st) {
        const stem = pictureStem(st);
        OUTPUTS.forEach(function (name) {
            const container = part(st.prefix, name);
            if (!container) {
                return;
            }
            container.querySelectorAll("a[download]").forEach(function (link) {
                const wanted = stem + "_" + name + ".png";
                if (link.getAttribute("download") !== wanted) {
                    link.setAttribute("download", wanted);
                }
            });
        });
    }

    // A large picture's outputs are shown at the click's mask size (the server builds full-size
    // files only when they are wanted): the mask output's width tells which ones are on screen.
    function outputsShownSmall(st) {
        const container = part(st.prefix, "mask");
        const img = container && container.querySelector("img");
        return Boolean(img && img.complete && img.naturalWidth && st.width && img.naturalWidth !== st.width);
    }

    // A download link of an output was clicked. If the outputs on screen are the small ones, the
    // click is held: the server builds the full-size files, and fullOutputsDone clicks the link again.
    function downloadClicked(event) {
        const target = event.composedPath ? event.composedPath()[0] : event.target;
        const link = target && target.closest && target.closest("a[download]");
        if (!link) {
            return;
        }
        for (const prefix in panels) {
            const st = panels[prefix];
            const name = OUTPUTS.find((n) => { const c = part(prefix, n); return c && c.contains(link); });
            if (!name) {
                continue;
            }
            if (outputsShownSmall(st)) {
                event.preventDefault();
                event.stopPropagation();
                const pending = st.pendingDownload;
                if (pending && !pending.answeredAt && Date.now() - pending.since < FULL_OUTPUTS_WAIT_MS) {
                    pending.name = name;
                    return; // already asked for (the same click seen from the app's shadow root, or a second link)
                }
                st.pendingDownload = {name: name, since: Date.now()};
                pressButton(st, "full_outputs");
            }
            return;
        }
    }

    // The full-size outputs were sent: once the browser shows them, the held download goes ahead.
    function finishDownload(st) {
        const pending = st.pendingDownload;
        if (!pending) {
            return;
        }
        pending.answeredAt = pending.answeredAt || Date.now();
        if (Date.now() - pending.answeredAt > FULL_OUTPUTS_SHOW_MS) {
            st.pendingDownload = null; // the build failed (its message is in the status), or a reset came
            return;
        }
        const container = part(st.prefix, pending.name);
        const link = container && container.querySelector("a[download]");
        if (outputsShownSmall(st) || !link || !outputsReady(st)) {
            setTimeout(() => finishDownload(st), 100);
            return;
        }
        st.pendingDownload = null;
        nameDownloads(st);
        link.click();
    }

    function outputsReady(st) {
        return OUTPUTS.every(function (name) {
            const container = part(st.prefix, name);
            const img = container && container.querySelector("img");
            return Boolean(img && img.complete && img.naturalWidth);
        });
    }

    // ----- prompt editing ---------------------------------------------------------------------

    function hasPrompts(st) {
        return st.points.length > 0 || st.boxes.length > 0;
    }

    function changed(st) {
        cancelHover(st);
        clearTimeout(st.outputsTimer);  // these prompts' answer will ask for its own outputs
        render(st);
        if (hasPrompts(st)) {
            st.changedAt = performance.now(); // for lastDrawnMs: the click's own moment
            schedulePreview(st);
        } else {
            clearTimeout(st.timer);
            st.timer = null;
            resetOutputs(st);
        }
    }

    function listOf(st, item) {
        return st.points.includes(item) ? st.points : st.boxes;
    }

    function addItem(st, list, item) {
        list.push(item);
        st.history.push({op: "add", item: item});
        changed(st);
    }

    function addPoint(st, p, label) {
        addItem(st, st.points, {x: Math.floor(p.x), y: Math.floor(p.y), label: label});
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
        addItem(st, st.boxes, box);
    }

    function removeItem(st, item) {
        const list = listOf(st, item);
        const index = list.indexOf(item);
        if (index < 0) {
            return;
        }
        list.splice(index, 1);
        st.history.push({op: "remove", item: item, list: list, index: index});
        changed(st);
    }

    // Undo reverts the last action, whatever it was: an added item goes, a removed one comes back
    // where it was, a "Clear" brings everything back.
    function undoLast(st) {
        const action = st.history.pop();
        if (!action) {
            return;
        }
        if (action.op === "add") {
            const list = listOf(st, action.item);
            const index = list.indexOf(action.item);
            if (index >= 0) {
                list.splice(index, 1);
            }
        } else if (action.op === "remove") {
            action.list.splice(Math.min(action.index, action.list.length), 0, action.item);
        } else if (action.op === "clear") {
            st.points = action.points;
            st.boxes = action.boxes;
        }
        changed(st);
    }

    function clearAll(st) {
        if (hasPrompts(st)) {
            st.history.push({op: "clear", points: st.points, boxes: st.boxes});
        }
        st.points = [];
        st.boxes = [];
        st.drag = null;
        changed(st);
    }

    // A new picture: the prompts, their history and the candidates of the old one mean nothing on it.
    function resetPrompts(st) {
        st.points = [];
        st.boxes = [];
        st.history = [];
        st.drag = null;
        clearTimeout(st.timer);
        st.timer = null;
        forgetCandidates(st);
        cancelHover(st);
        showEncoding(st, false);
        render(st);
    }

    function autoPreviewEnabled(st) {
        const box = part(st.prefix, "auto_preview");
        const input = box && (box.tagName === "INPUT" ? box : box.querySelector("input[type=checkbox]"));
        return Boolean(input && input.checked);
    }

    function promptsJson(st) {
        return JSON.stringify({
            name: st.name,
            width: st.width,
            height: st.height,
            points: st.points.map((p) => [p.x + 0.5, p.y + 0.5, p.label]),
            boxes: st.boxes.map((b) => [b.x0, b.y0, b.x1, b.y1]),
        });
    }

    function previewInFlight(st) {
        return st.sentAt > 0 && Date.now() - st.sentAt < PREVIEW_LOST_MS;
    }

    // A click after a quiet spell is sent at once. Clicks in quick succession are debounced, and
    // while a preview is being computed later clicks only mark the prompts as changed: when the
    // answer arrives (previewDone) one more preview is sent for the prompts as they are then. So
    // the clicks made while one preview is computed cost one more decoder run, and the masks shown
    // always end up matching the dots.
    function schedulePreview(st) {
        if (!autoPreviewEnabled(st)) {
            return;
        }
        const quiet = st.timer === null && !previewInFlight(st)
            && Date.now() - (st.lastSentAt || 0) >= PREVIEW_QUIET_MS;
        clearTimeout(st.timer);
        // Even "at once" goes through a zero timer: the click's own event handling finishes first.
        st.timer = setTimeout(() => sendPreview(st), quiet ? 0 : PREVIEW_DEBOUNCE_MS);
    }

    function sendPreview(st) {
        st.timer = null;
        if (previewInFlight(st)) {
            return; // previewDone sends the newest prompts
        }
        pressButton(st, "preview");
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

    // ----- hover preview ----------------------------------------------------------------------

    function hoverEnabled(st) {
        const box = part(st.prefix, "hover_preview");
        const input = box && (box.tagName === "INPUT" ? box : box.querySelector("input[type=checkbox]"));
        return Boolean(input && input.checked) && st.readySrc === st.src && st.width > 0
            && (!st.lastClickMs || st.lastClickMs <= HOVER_SLOW_MS);
    }

    // The pointer rests on the picture: after the debounce, ask for the mask under it. Never while
    // a click's preview is on its way (a hover must not delay it), never during a drag.
    function scheduleHover(st, event) {
        if (st.drag || !st.svg || previewInFlight(st) || st.timer !== null || !hoverEnabled(st)) {
            return;
        }
        const p = toImage(st, event);
        if (!insideImage(st, p)) {
            cancelHover(st);
            return;
        }
        st.hover.point = {x: Math.floor(p.x), y: Math.floor(p.y)};
        clearTimeout(st.hover.timer);
        st.hover.timer = setTimeout(function () {
            st.hover.timer = null;
            if (st.hover.inFlight && Date.now() - st.hover.sentAt < HOVER_LOST_MS) {
                st.hover.again = true; // sent when the one in flight is answered
                return;
            }
            sendHover(st);
        }, HOVER_DEBOUNCE_MS);
    }

    function sendHover(st) {
        st.hover.again = false;
        if (!st.hover.point || previewInFlight(st) || st.timer !== null) {
            return;
        }
        const button = part(st.prefix, "hover");
        if (button) {
            st.hover.inFlight = true;
            st.hover.sentAt = Date.now();
            button.click();
        }
    }

    // A click, a drag, the pointer leaving, new prompts or a new picture: the hover mask goes, and
    // an answer still on its way is dropped.
    function cancelHover(st) {
        clearTimeout(st.hover.timer);
        st.hover.timer = null;
        st.hover.point = null;
        st.hover.again = false;
        st.hover.dropBelow = st.hover.seq + 1;
        drawHover(st, null);
    }

    function drawHover(st, layer) {
        const canvas = st.hoverCanvas;
        if (!canvas) {
            return;
        }
        canvas.width = layer ? layer.width : 1;
        canvas.height = layer ? layer.height : 1;
        if (layer) {
            canvas.getContext("2d").drawImage(layer, 0, 0);
        }
        canvas.dataset.drawn = layer ? String(st.hover.seq) : "";
    }

    function showHover(st, json, seq) {
        let data = null;
        try {
            data = json ? JSON.parse(json) : null;
        } catch (error) {
            data = null;
        }
        if (!data || !data.mask) {
            return;
        }
        if (seq < st.hover.dropBelow || seq !== st.hover.seq || !st.hover.point) {
            return;
        }
        let inside = null;
        try {
            inside = unpackMask(data.mask, data.maskWidth, data.maskHeight);
        } catch (error) {
            return;  // no mask under the pointer is shown: the click still works
        }
        drawHover(st, tintedLayer(inside, data.maskWidth, data.maskHeight, HOVER_FILL, HOVER_OUTLINE));
        st.hoversDrawn += 1;
    }

    // ----- binding ----------------------------------------------------------------------------

    function onMouseDown(st, event) {
        if (event.button !== 0 || !st.svg) {
            return;
        }
        event.preventDefault(); // no native image drag
        event.stopPropagation();
        cancelHover(st);
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
        img.addEventListener("mousemove", (e) => scheduleHover(st, e));
        img.addEventListener("mouseleave", () => cancelHover(st));
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
                if (st.canvas) {
                    st.canvas.remove();
                }
                if (st.encodingNote) {
                    st.encodingNote.remove();
                }
                st.svg = null;
                st.canvas = null;
                st.encodingNote = null;
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
            st.pictures = (st.pictures || 0) + 1;
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

    // Things gradio may re-create at any time: the strip's slots (if it re-renders the HTML) and
    // the download links (gradio 3 makes a new one named "image" with each output).
    function keepUp(prefix) {
        const st = panelState(prefix);
        const element = strip(st);
        if (element && element.children.length !== 3) {
            renderStrip(st);
        }
        nameDownloads(st);
    }

    // Which panel an event inside an "<prefix>_input_image" belongs to.
    function inputPrefix(event) {
        const target = event.composedPath ? event.composedPath()[0] : event.target;
        const container = target && target.closest && target.closest("[id$='_input_image']");
        if (!container) {
            return null;
        }
        const prefix = container.id.slice(0, -"_input_image".length);
        return part(prefix, "panel") ? prefix : null;
    }

    // The uploaded file's name is known only here (gradio hands the server pixels, not a name).
    function rememberName(event) {
        const prefix = inputPrefix(event);
        const files = event.type === "drop" ? (event.dataTransfer && event.dataTransfer.files) : event.target.files;
        if (prefix && files && files.length) {
            panelState(prefix).name = files[0].name;
        }
    }

    // The radio is changed by the user, or by us from the strip: the canvas and the strip follow.
    function radioChanged(event) {
        const target = event.composedPath ? event.composedPath()[0] : event.target;
        if (!target || target.type !== "radio" || !target.checked) {
            return;
        }
        const container = target.closest && target.closest("[id$='_choice']");
        if (!container) {
            return;
        }
        const prefix = container.id.slice(0, -"_choice".length);
        if (!panels[prefix]) {
            return;
        }
        const st = panels[prefix];
        const index = radioInputs(st).indexOf(target);
        if (index >= 0 && index !== st.selected) {
            select(st, index, false);
        }
    }

    let scanQueued = false;

    function scan() {
        scanQueued = false;
        appRoot().querySelectorAll(".sam-panel").forEach(function (panel) {
            if (panel.id && panel.id.endsWith("_panel")) {
                const prefix = panel.id.slice(0, -"_panel".length);
                bindPanel(prefix);
                keepUp(prefix);
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
        const roots = [document];
        if (appRoot() !== document) {
            roots.push(appRoot()); // change events do not leave a shadow root
        }
        roots.forEach(function (root) {
            root.addEventListener("change", rememberName, true);
            root.addEventListener("drop", rememberName, true);
            root.addEventListener("change", radioChanged, true);
            root.addEventListener("click", downloadClicked, true);
        });
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
            st.lastSentAt = st.sentAt;
            st.sentEncoded = st.encodedSrc === st.src;
            showEncoding(st, !st.sentEncoded);
            await imageOnServer(st);
            st.requestAt = performance.now();
            values[promptIndex] = promptsJson(st);
            st.sentPrompts = values[promptIndex];
            st.previewsSent = (st.previewsSent || 0) + 1;
            return values;
        },
        // The hover button's browser-side step: the prompts plus the point under the pointer.
        collectHover: function (prefix, args, promptIndex, inputCount) {
            const st = panelState(prefix);
            const values = Array.from(args).slice(0, inputCount);
            const p = st.hover.point;
            st.hover.seq += 1;
            const points = st.points.map((q) => [q.x + 0.5, q.y + 0.5, q.label]);
            if (p) {
                points.push([p.x + 0.5, p.y + 0.5, 1]);
            }
            values[promptIndex] = JSON.stringify({name: st.name, width: st.width, height: st.height, points: points,
                                                  boxes: st.boxes.map((b) => [b.x0, b.y0, b.x1, b.y1])});
            return values;
        },
        hoverDone: function (prefix, data) {
            const st = panelState(prefix);
            st.hover.inFlight = false;
            showHover(st, data, st.hover.seq);
            if (st.hover.again) {
                sendHover(st);
            }
            return [];
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
        // Runs when the server has built the full-size outputs a held download waits for.
        fullOutputsDone: function (prefix) {
            finishDownload(panelState(prefix));
            return [];
        },
        // Runs when the server has encoded the picture on its own (after an upload or a model
        // change): a click on it now runs the decoder only.
        imageEncoded: function (prefix) {
            const st = panelState(prefix);
            const container = part(prefix, "input_image");
            const img = container && container.querySelector("img");
            st.encodedSrc = img ? img.getAttribute("src") : null;
            return [];
        },
        // Another model was chosen: the picture's next click pays for its encoder again.
        modelChanged: function (prefix) {
            panelState(prefix).encodedSrc = null;
            return [];
        },
        // Runs when a preview has been answered (success or failure), with the answer's masks
        // (handlers.candidates_payload; empty after a failure).
        previewDone: function (prefix, data) {
            const st = panelState(prefix);
            const sent = st.sentPrompts;
            st.answeredAt = performance.now();
            if (st.sentAt) {
                st.lastClickMs = Date.now() - st.sentAt;
            }
            st.sentAt = 0;
            st.sentPrompts = null;
            st.previewsAnswered = (st.previewsAnswered || 0) + 1;
            showEncoding(st, false);
            if (data) {
                st.encodedSrc = st.src; // masks came back: the server holds this picture's embedding
            }
            if (data === undefined) {
                return [];
            }
            if (!hasPrompts(st)) {
                // Cleared while the preview was in flight: its answer is stale, and so is what the
                // server now shows. (A failed preview left nothing but its message, which stays.)
                if (data) {
                    resetOutputs(st);
                } else {
                    forgetCandidates(st);
                }
                return [];
            }
            // The outputs are built once the chosen mask is on the canvas and the clicks pause (after
            // a failure too: they are emptied then).
            showCandidates(st, data);
            clearTimeout(st.outputsTimer);
            st.outputsTimer = setTimeout(() => pressButton(st, "show_outputs"), OUTPUTS_QUIET_MS);
            if (sent !== null && st.timer === null && promptsJson(st) !== sent) {
                schedulePreview(st);
            }
            return [];
        },
        // Candidates from another source (the text prompt's "Segment kept boxes").
        showCandidates: function (prefix, data) {
            showCandidates(panelState(prefix), data);
            return [];
        },
        undo: function (prefix) {
            undoLast(panelState(prefix));
            return [];
        },
        clear: function (prefix) {
            clearAll(panelState(prefix));
            return [];
        },
        // For tests and the benchmark: the prompts as the panel holds them, and what it shows.
        prompts: function (prefix) {
            const st = panelState(prefix);
            return {width: st.width, height: st.height, points: st.points.slice(), boxes: st.boxes.slice(),
                    previewsSent: st.previewsSent || 0, previewsAnswered: st.previewsAnswered || 0,
                    masksDrawn: st.masksDrawn, hoversDrawn: st.hoversDrawn, encodingShown: st.encodingShown, lastClickMs: st.lastClickMs,
                    pictures: st.pictures || 0, lastDrawnMs: st.lastDrawnMs, lastSplit: st.lastSplit || null, sentEncoded: Boolean(st.sentEncoded), selected: st.data ? st.selected : null,
                    token: st.data ? st.data.token : null, name: pictureStem(st)};
        },
        // For tests: the candidates on screen (their masks as the server sent them).
        candidates: function (prefix) {
            const st = panelState(prefix);
            if (!st.data) {
                return null;
            }
            return {token: st.data.token, best: st.data.best, selected: st.selected, scores: st.data.scores.slice(),
                    masks: st.data.masks.slice(), maskWidth: st.data.maskWidth, maskHeight: st.data.maskHeight,
                    drawn: st.canvas ? st.canvas.dataset.drawn : ""};
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
