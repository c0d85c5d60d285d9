"""Text tokenizer: a thin policy layer over a HuggingFace ``tokenizers.Tokenizer``.

The procedural world ships a WordLevel tokenizer built from its closed grammar vocabulary
(:func:`build_word_level`); a user with real data drops in any other ``tokenizer.json`` that
defines the special tokens below. Unknown words are an error that lists them (``unk="error"``,
the default) or map to the unk token (``unk="map"``) — never a silent mangle.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from procpaint.io import atomic_save

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
TAGS = ("<ins>", "</ins>", "<des>", "</des>", "<refine>", "</refine>")
SPECIAL_TOKENS = (PAD, EOS, UNK, VISION_START, VISION_END, *TAGS)


class UnknownWordsError(ValueError):
    """Raised when text contains words outside the tokenizer's vocabulary."""

    def __init__(self, words: list[str], text: str):
        self.words = words
        super().__init__(f"unknown word(s) {sorted(set(words))} in {text!r}; the tokenizer's "
                         f"vocabulary does not contain them (use unk='map' to map them to {UNK})")


def build_word_level(words: Iterable[str]) -> Tokenizer:
    """A WordLevel tokenizer over ``words`` plus the special tokens (ids 0.. in SPECIAL_TOKENS order).

    Text is NFKC-normalised and lower-cased, split on whitespace and punctuation; special tokens
    are matched before splitting, so ``"<ins>draw a red circle</ins>"`` needs no spaces.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in sorted(set(words)):
        if word not in vocab:
            vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words, fixes " ," spacing
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


class TextTokenizer:
    """Encodes text to ids with an explicit unknown-word policy and exposes the special ids."""

    def __init__(self, tokenizer: Tokenizer | str | Path, *, unk: str = "error"):
        if not isinstance(tokenizer, Tokenizer):
            path = Path(tokenizer)
            if not path.is_file():
                raise FileNotFoundError(f"tokenizer file not found: {path}")
            tokenizer = Tokenizer.from_file(str(path))
        if unk not in ("error", "map"):
            raise ValueError(f"unk must be 'error' or 'map', got {unk!r}")
        self.tok, self.unk_policy = tokenizer, unk
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None and t != UNK]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}; add them before use")
        self.pad_id = tokenizer.token_to_id(PAD)
        self.eos_id = tokenizer.token_to_id(EOS)
        self.unk_id = tokenizer.token_to_id(UNK)
        self.vision_start_id = tokenizer.token_to_id(VISION_START)
        self.vision_end_id = tokenizer.token_to_id(VISION_END)
        self.tag_ids = {t: tokenizer.token_to_id(t) for t in TAGS}

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        enc = self.tok.encode(text, add_special_tokens=False)
        if self.unk_policy == "error" and self.unk_id is not None and self.unk_id in enc.ids:
            unknown = [text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets) if i == self.unk_id]
            raise UnknownWordsError(unknown, text)
        return enc.ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (temporary name, then rename)."""
        atomic_save(path, lambda tmp: self.tok.save(str(tmp)))
