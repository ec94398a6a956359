import pytest

from agile.prompt import PromptTemplate


def test_prompt_layout_matches_the_method():
    t = PromptTemplate(labels=("Positive", "Negative"), instructions="Classify", separator="<separator>")
    assert t.prompt("you look nice") == (
        "Classify:[Positive,Negative]<separator>Text:you look nice<separator>Prediction:"
    )
    assert t.training_text("x", 1) == "Classify:[Positive,Negative]<separator>Text:x<separator>Prediction:Negative<eos>"
    assert t.head + "abc" + t.tail == t.prompt("abc")


def test_separator_with_newlines_as_in_the_worked_example():
    t = PromptTemplate(separator="\n<separator>\n")
    assert t.prompt("hi").split("\n") == [
        "Classify the following text into one of the following classes:[Positive,Negative]",
        "<separator>",
        "Text:hi",
        "<separator>",
        "Prediction:",
    ]


@pytest.mark.parametrize("labels", [("Only",), ("A", "A")])
def test_bad_label_sets_are_refused(labels):
    with pytest.raises(ValueError):
        PromptTemplate(labels=labels)
