"""BERT uncased WordPiece tokenization and GroundingDINO's caption layout.

GroundingDINO reads a caption as phrases separated by " . ": every phrase (with its trailing
".") attends only to itself inside BERT and restarts its position ids, so several phrases in
one caption do not blur into one another. :class:`CaptionTokens` carries the ids, the
per-phrase token spans (used to name each box) and the block-diagonal mask.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from sd_webui_sam.errors import InvalidPromptError

VOCAB_FILE = "vocab.txt"
BUNDLED_VOCAB = Path(__file__).resolve().parent / VOCAB_FILE
#: GroundingDINO's text branch is sized for this many tokens; longer captions are cut.
MAX_TEXT_LEN = 256
#: Tokens after which a new phrase starts (GroundingDINO's "special tokens").
SEPARATOR_TOKENS = ("[CLS]", "[SEP]", ".", "?")
#: What a user may type between phrases. "?" is included because the model treats it as a
#: phrase boundary anyway.
PHRASE_SEPARATORS = re.compile(r"[,.?]")
MAX_WORD_CHARS = 100


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    # BERT treats every non-alphanumeric ASCII symbol ("$", "^", "`") as punctuation too.
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B73F
        or 0x2B740 <= code <= 0x2B81F
        or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT's uncased tokenizer: clean, lower-case, strip accents, split punctuation, WordPiece."""

    def __init__(self, vocab: Sequence[str]):
        #: Rows of the embedding table this vocabulary addresses.
        self.size = len(vocab)
        self.vocab: Dict[str, int] = {}
        for index, token in enumerate(vocab):
            self.vocab.setdefault(token, index)
        for required in ("[CLS]", "[SEP]", "[UNK]", "."):
            if required not in self.vocab:
                raise InvalidPromptError(
                    f"The tokenizer vocabulary has no {required!r} token; point the tokenizer setting at a BERT uncased vocab.txt."
                )
        self.tokens: Tuple[str, ...] = tuple(vocab)
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.separator_ids = frozenset(self.vocab[token] for token in SEPARATOR_TOKENS if token in self.vocab)

    @classmethod
    def from_directory(cls, directory: Optional[Path] = None) -> "WordPieceTokenizer":
        """The vocab.txt in ``directory``, or the bundled bert-base-uncased one."""
        path = BUNDLED_VOCAB if directory is None else Path(directory) / VOCAB_FILE
        if not path.is_file():
            raise InvalidPromptError(
                f"No {VOCAB_FILE} in {path.parent}. Point the GroundingDINO tokenizer setting at a folder "
                "that holds BERT's uncased vocab.txt, or clear it to use the bundled one."
            )
        return cls(path.read_text(encoding="utf-8").splitlines())

    def _basic_tokens(self, text: str) -> List[str]:
        cleaned = []
        for char in text:
            code = ord(char)
            if code == 0 or code == 0xFFFD or _is_control(char):
                continue
            if _is_whitespace(char):
                cleaned.append(" ")
            elif _is_cjk(code):
                cleaned.append(f" {char} ")
            else:
                cleaned.append(char)
        tokens: List[str] = []
        for word in "".join(cleaned).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(char for char in word if unicodedata.category(char) != "Mn")
            current: List[str] = []
            for char in word:
                if _is_punctuation(char):
                    if current:
                        tokens.append("".join(current))
                        current = []
                    tokens.append(char)
                else:
                    current.append(char)
            if current:
                tokens.append("".join(current))
        return tokens

    def _word_pieces(self, word: str) -> List[int]:
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_id]
        pieces: List[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    found = self.vocab[candidate]
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            pieces.append(found)
            start = end
        return pieces

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` without [CLS]/[SEP]."""
        ids: List[int] = []
        for word in self._basic_tokens(text):
            ids.extend(self._word_pieces(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids back to text as BERT's tokenizer writes it: word pieces glued, special
        tokens kept ("[SEP]"), no blank before punctuation or English contractions.

        GroundingDINO names its boxes with this text, so the reference-compatible routes must
        spell phrases exactly this way.
        """
        text = " ".join(self.tokens[i] if 0 <= i < len(self.tokens) else "[UNK]" for i in ids)
        text = text.replace(" ##", "").strip()
        for spaced, tight in _DECODE_CLEAN_UP:
            text = text.replace(spaced, tight)
        return text


#: BERT's clean-up of decoded text (the same literal replacements, in the same order).
_DECODE_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                    (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def split_caption(caption: str) -> List[str]:
    """'Hand, FACE.' -> ['hand', 'face']: lower case, split on ',' '.' '?', blanks dropped."""
    phrases = []
    for part in PHRASE_SEPARATORS.split((caption or "").lower()):
        phrase = " ".join(part.split())
        if phrase:
            phrases.append(phrase)
    return phrases


def caption_text(phrases: Sequence[str]) -> str:
    """The caption GroundingDINO was trained on: 'hand . face .'."""
    return " . ".join(phrases) + " ."


@dataclass(frozen=True)
class CaptionTokens:
    phrases: Tuple[str, ...]
    #: [CLS] phrase1 . phrase2 . ... [SEP], possibly longer than MAX_TEXT_LEN.
    input_ids: Tuple[int, ...]
    #: Token index range [start, end) of each phrase (without its "."), in the full sequence.
    phrase_spans: Tuple[Tuple[int, int], ...]
    separator_ids: frozenset

    @property
    def truncated(self) -> bool:
        return len(self.input_ids) > MAX_TEXT_LEN

    def kept_phrase_spans(self) -> List[Tuple[int, Tuple[int, int]]]:
        """(phrase index, span clipped to MAX_TEXT_LEN) for phrases with at least one kept token."""
        kept = []
        for index, (start, end) in enumerate(self.phrase_spans):
            end = min(end, MAX_TEXT_LEN)
            if start < end:
                kept.append((index, (start, end)))
        return kept

    def model_inputs(self, device: torch.device) -> Dict[str, torch.Tensor]:
        """input_ids, the phrase-block self-attention mask and per-phrase position ids, cut to 256.

        The blocks are laid out on the whole sequence first and cut afterwards, as the
        checkpoints were trained, so a phrase crossing the limit keeps its first tokens.
        """
        count = len(self.input_ids)
        mask = torch.eye(count, dtype=torch.bool)
        positions = torch.zeros(count, dtype=torch.long)
        previous = 0
        for column, token in enumerate(self.input_ids):
            if token not in self.separator_ids:
                continue
            if 0 < column < count - 1:
                mask[previous + 1 : column + 1, previous + 1 : column + 1] = True
                positions[previous + 1 : column + 1] = torch.arange(column - previous)
            previous = column
        kept = min(count, MAX_TEXT_LEN)
        return {
            "input_ids": torch.tensor(self.input_ids[:kept], dtype=torch.long, device=device)[None],
            "self_attention_mask": mask[:kept, :kept].to(device)[None],
            "position_ids": positions[:kept].to(device)[None],
        }


def tokenize_caption(tokenizer: WordPieceTokenizer, caption: str) -> CaptionTokens:
    """Split a user's caption into phrases and lay them out as GroundingDINO expects."""
    phrases = split_caption(caption)
    if not phrases:
        raise InvalidPromptError("The text prompt is empty. Type what to find, e.g. 'hand, face'.")
    ids = [tokenizer.cls_id]
    spans = []
    period = tokenizer.vocab["."]
    kept_phrases = []
    for phrase in phrases:
        pieces = tokenizer.encode(phrase)
        if not pieces:
            continue
        spans.append((len(ids), len(ids) + len(pieces)))
        ids.extend(pieces)
        ids.append(period)
        kept_phrases.append(phrase)
    if not kept_phrases:
        raise InvalidPromptError("The text prompt has no words the model can read. Type what to find, e.g. 'hand, face'.")
    ids.append(tokenizer.sep_id)
    return CaptionTokens(tuple(kept_phrases), tuple(ids), tuple(spans), tokenizer.separator_ids)


def reference_caption_tokens(tokenizer: WordPieceTokenizer, caption: str) -> CaptionTokens:
    """The caption as the reference extension feeds it: lower case, stripped, a final "." added,
    and tokenized whole (commas stay inside one phrase block), with no phrase splitting.

    Its single "phrase" spans every token between [CLS] and [SEP]; boxes are named by
    :meth:`WordPieceTokenizer.decode` of their tokens instead.
    """
    text = (caption or "").lower().strip()
    if not text.strip(" .,?"):
        raise InvalidPromptError("The text prompt is empty. Type what to find, e.g. 'hand, face'.")
    if not text.endswith("."):
        text += "."
    ids = [tokenizer.cls_id, *tokenizer.encode(text), tokenizer.sep_id]
    return CaptionTokens((text,), tuple(ids), ((1, len(ids) - 1),), tokenizer.separator_ids)
