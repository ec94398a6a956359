"""The agile-classifier prompt: instructions and labels, then the text, each part split by a separator."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_INSTRUCTIONS = "Classify the following text into one of the following classes"
DEFAULT_LABELS = ("Positive", "Negative")
# The codelab's worked example prints "\n<separator>\n", but its AgileClassifier
# (which produced its published results) joins with the bare token: we keep that.
DEFAULT_SEPARATOR = "<separator>"
DEFAULT_EOS = "<eos>"
# Tokens per prompt, BOS included: the codelab's sequence length, and every default here.
DEFAULT_MAX_LENGTH = 128


@dataclass(frozen=True)
class PromptTemplate:
    """`{instructions}:[{labels}]` SEP `Text:{text}` SEP `Prediction:`; the label follows."""

    labels: tuple[str, ...] = DEFAULT_LABELS
    instructions: str = DEFAULT_INSTRUCTIONS
    separator: str = DEFAULT_SEPARATOR
    eos: str = DEFAULT_EOS

    def __post_init__(self) -> None:
        labels = tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        if len(labels) < 2:
            raise ValueError(f"a classifier needs at least two labels, got {list(labels)}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct, got {list(labels)}")

    @property
    def head(self) -> str:
        """Everything before the comment text (the same for every comment)."""
        return f"{self.instructions}:[{','.join(self.labels)}]{self.separator}Text:"

    @property
    def tail(self) -> str:
        """Everything after the comment text; the next token is the label."""
        return f"{self.separator}Prediction:"

    def prompt(self, text: str) -> str:
        return f"{self.head}{text}{self.tail}"

    def training_text(self, text: str, label_index: int) -> str:
        """The codelab's causal-LM training example: prompt, label, end of text."""
        return f"{self.prompt(text)}{self.labels[label_index]}{self.eos}"
