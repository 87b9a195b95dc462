// zlib data (RFC 1950 around RFC 1951's DEFLATE) decoded synchronously: the panel's candidate
// masks arrive so (handlers.packed_mask). The browser's DecompressionStream only answers
// asynchronously, and between a click's answer and its mask on the canvas each wait let the page's
// other work go first (20-30 ms a click). A mask is a few KB compressed, so decoding bit by bit,
// with canonical Huffman codes counted per length (no lookup tables), takes a millisecond or two.
//
// window.samZlibInflate(bytes: Uint8Array, size: number) -> Uint8Array of exactly `size` bytes,
// or throws an Error on anything that is not a complete, well-formed zlib stream of that size.
(function () {
    "use strict";
    if (window.samZlibInflate) {
        return;
    }

    // RFC 1951, 3.2.5: lengths of the length codes 257..285 and distances of the codes 0..29.
    const LENGTH_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227, 258];
    const LENGTH_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
    const DISTANCE_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
        2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577];
    const DISTANCE_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12,
        13, 13];
    // RFC 1951, 3.2.7: the order in which a dynamic block gives its code-length code's lengths.
    const CODE_LENGTH_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
    const MAX_BITS = 15;

    function fail(what) {
        throw new Error("not a valid compressed mask: " + what);
    }

    // A canonical Huffman code from each symbol's code length (0: unused): how many codes each
    // length has, and the symbols in code order.
    function huffman(lengths) {
        const counts = new Uint16Array(MAX_BITS + 1);
        for (let symbol = 0; symbol < lengths.length; symbol++) {
            counts[lengths[symbol]] += 1;
        }
        counts[0] = 0;
        const next = new Uint16Array(MAX_BITS + 2);
        for (let length = 1; length <= MAX_BITS; length++) {
            next[length + 1] = next[length] + counts[length];
        }
        const symbols = new Uint16Array(lengths.length);
        for (let symbol = 0; symbol < lengths.length; symbol++) {
            if (lengths[symbol]) {
                symbols[next[lengths[symbol]]++] = symbol;
            }
        }
        return {counts: counts, symbols: symbols};
    }

    function fixedCodes() {
        const literal = new Uint8Array(288);
        literal.fill(8, 0, 144);
        literal.fill(9, 144, 256);
        literal.fill(7, 256, 280);
        literal.fill(8, 280, 288);
        return {literal: huffman(literal), distance: huffman(new Uint8Array(30).fill(5))};
    }

    function Reader(data) {
        this.data = data;
        this.position = 2; // after the zlib header
        this.buffer = 0;   // bits read from data but not used yet, the next one lowest
        this.count = 0;
    }

    Reader.prototype.bits = function (wanted) {
        let value = this.buffer;
        while (this.count < wanted) {
            if (this.position >= this.data.length) {
                fail("it ends early");
            }
            value |= this.data[this.position++] << this.count;
            this.count += 8;
        }
        this.buffer = value >>> wanted;
        this.count -= wanted;
        return value & ((1 << wanted) - 1);
    };

    // One symbol: a Huffman code's bits come first-bit-first, so the code is built up a bit at a
    // time and compared with the range of codes of each length in turn.
    Reader.prototype.symbol = function (code) {
        let value = 0;
        let first = 0;  // the first code of this length
        let index = 0;  // its symbol's place in code.symbols
        for (let length = 1; length <= MAX_BITS; length++) {
            value |= this.bits(1);
            const count = code.counts[length];
            if (value - first < count) {
                return code.symbols[index + value - first];
            }
            index += count;
            first = (first + count) << 1;
            value <<= 1;
        }
        return fail("an unknown code");
    };

    function dynamicCodes(reader) {
        const literalCount = reader.bits(5) + 257;
        const distanceCount = reader.bits(5) + 1;
        const lengthCodeCount = reader.bits(4) + 4;
        if (literalCount > 286 || distanceCount > 30) {
            fail("too many codes");
        }
        const lengthCodeLengths = new Uint8Array(19);
        for (let i = 0; i < lengthCodeCount; i++) {
            lengthCodeLengths[CODE_LENGTH_ORDER[i]] = reader.bits(3);
        }
        const lengthCode = huffman(lengthCodeLengths);
        const lengths = new Uint8Array(literalCount + distanceCount);
        for (let i = 0; i < lengths.length;) {
            const symbol = reader.symbol(lengthCode);
            if (symbol < 16) {
                lengths[i++] = symbol;
                continue;
            }
            let value = 0;
            let repeat;
            if (symbol === 16) {
                if (i === 0) {
                    fail("a repeat with nothing before it");
                }
                value = lengths[i - 1];
                repeat = 3 + reader.bits(2);
            } else if (symbol === 17) {
                repeat = 3 + reader.bits(3);
            } else {
                repeat = 11 + reader.bits(7);
            }
            if (i + repeat > lengths.length) {
                fail("too many code lengths");
            }
            lengths.fill(value, i, i + repeat);
            i += repeat;
        }
        if (!lengths[256]) {
            fail("no end-of-block code");
        }
        return {literal: huffman(lengths.subarray(0, literalCount)), distance: huffman(lengths.subarray(literalCount))};
    }

    window.samZlibInflate = function (data, size) {
        if (data.length < 6 || (data[0] & 0x0f) !== 8 || ((data[0] << 8) | data[1]) % 31 !== 0 || (data[1] & 0x20)) {
            fail("no zlib header");
        }
        const out = new Uint8Array(size);
        const reader = new Reader(data);
        let written = 0;
        let fixed = null;
        let last = 0;
        while (!last) {
            last = reader.bits(1);
            const type = reader.bits(2);
            if (type === 0) { // stored: byte-aligned length, its complement, the bytes
                reader.buffer = 0;
                reader.count = 0;
                const at = reader.position;
                if (at + 4 > data.length) {
                    fail("it ends early");
                }
                const length = data[at] | (data[at + 1] << 8);
                if ((length ^ (data[at + 2] | (data[at + 3] << 8))) !== 0xffff) {
                    fail("a stored block's length");
                }
                if (at + 4 + length > data.length || written + length > size) {
                    fail("a stored block's size");
                }
                out.set(data.subarray(at + 4, at + 4 + length), written);
                written += length;
                reader.position = at + 4 + length;
                continue;
            }
            if (type === 3) {
                fail("an unknown block type");
            }
            const codes = type === 1 ? (fixed = fixed || fixedCodes()) : dynamicCodes(reader);
            for (;;) {
                let symbol = reader.symbol(codes.literal);
                if (symbol < 256) {
                    if (written >= size) {
                        fail("more bytes than the mask has");
                    }
                    out[written++] = symbol;
                    continue;
                }
                if (symbol === 256) {
                    break;
                }
                symbol -= 257;
                if (symbol >= 29) {
                    fail("an unknown length code");
                }
                const length = LENGTH_BASE[symbol] + reader.bits(LENGTH_EXTRA[symbol]);
                const code = reader.symbol(codes.distance);
                if (code >= 30) {
                    fail("an unknown distance code");
                }
                const distance = DISTANCE_BASE[code] + reader.bits(DISTANCE_EXTRA[code]);
                if (distance > written || written + length > size) {
                    fail("a copy outside the mask");
                }
                for (let i = 0; i < length; i++, written++) {
                    out[written] = out[written - distance];
                }
            }
        }
        if (written !== size) {
            fail("fewer bytes than the mask has");
        }
        // The stream ends with the Adler-32 checksum of what it holds, big-endian, byte-aligned
        // (the bits left over are the last byte's unused ones).
        const at = reader.position;
        if (at + 4 > data.length) {
            fail("no checksum");
        }
        const expected = ((data[at] << 24) | (data[at + 1] << 16) | (data[at + 2] << 8) | data[at + 3]) >>> 0;
        if (adler32(out) !== expected) {
            fail("a wrong checksum");
        }
        return out;
    };

    function adler32(bytes) {
        let a = 1;
        let b = 0;
        for (let i = 0; i < bytes.length;) {
            // 5552 bytes at most between reductions keep both sums within 32 bits (zlib's NMAX)
            const end = Math.min(bytes.length, i + 5552);
            for (; i < end; i++) {
                a += bytes[i];
                b += a;
            }
            a %= 65521;
            b %= 65521;
        }
        return ((b << 16) | a) >>> 0;
    }
})();
