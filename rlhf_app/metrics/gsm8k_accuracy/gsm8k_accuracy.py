"""GSM8K accuracy as an `evaluate` metric: the share of predictions whose final answer equals the
reference's, graded by `rlhf_app.rewards.gsm8k.compute_score`.

It ships inside the project so that `evaluate.load(<this folder>)` works offline. evaluate reads
the imports below to check dependencies: keep one module per `import` line.
"""

import datasets
import evaluate

from rlhf_app.rewards.gsm8k import accuracy_metrics

_DESCRIPTION = """Accuracy on GSM8K-style problems. A prediction is correct when its final number
(after '####' with method='strict', or its last number with method='flexible') equals the
reference's: a GSM8K solution ending '#### N' or a bare number. Numbers compare as numbers
(3.50 == 3.5, 1,000 == 1000)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): model completions.
    references (list of str): GSM8K solutions ending '#### N', or bare numbers.
    method (str): 'strict' (default) or 'flexible'.
    multiple_answers (str): 'last' (default: the last '#### N' counts) or 'none' (several are no answer).
    answer_at_end (bool): the '#### N' must end the prediction (default False: anywhere).
Returns:
    accuracy (float): share of correct predictions with `method`, in [0, 1].
    accuracy_strict, accuracy_flexible (float): the same with each method.
    format_share (float): share of predictions holding a well-formed '#### N'.
    format_end_share (float): share of predictions that end with it (whatever answer_at_end is).
Examples:
    >>> metric = evaluate.load("rlhf_app/metrics/gsm8k_accuracy")
    >>> metric.compute(predictions=["so #### 42"], references=["... #### 42"])
    {'accuracy': 1.0, 'accuracy_strict': 1.0, 'accuracy_flexible': 1.0, 'format_share': 1.0, 'format_end_share': 1.0}
"""

_CITATION = """@article{cobbe2021gsm8k, title={Training Verifiers to Solve Math Word Problems},
author={Cobbe, Karl and others}, journal={arXiv preprint arXiv:2110.14168}, year={2021}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Gsm8kAccuracy(evaluate.Metric):
    """Exact-answer accuracy with the project's GSM8K checker (`accuracy_metrics`, as every report)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, method="strict", multiple_answers="last", answer_at_end=False):
        return accuracy_metrics(predictions, references, method, multiple_answers, answer_at_end)
