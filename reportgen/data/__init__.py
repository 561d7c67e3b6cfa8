"""Data stage: tokenizer, arithmetic ground truth and data sets (pure Python, no torch)."""

from reportgen.data.arithmetic import (
    ANSWER_ORDERS,
    OPS,
    STRATA,
    TASK_OPS,
    TASKS,
    answer_text,
    apply_op,
    fast_stratum,
    label_problem,
    make_record,
    parse_problem,
    predicting_positions,
    steps_text,
    stratum_of,
)
from reportgen.data.dataset import (
    DataSpec,
    count_questions,
    generate,
    load_dataset,
    possible_strata,
    stratified_examples,
    write_dataset,
)
from reportgen.data.tokenizer import Tokenizer

__all__ = [
    "ANSWER_ORDERS", "OPS", "STRATA", "TASK_OPS", "TASKS", "DataSpec", "Tokenizer",
    "answer_text", "apply_op", "fast_stratum", "count_questions", "generate",
    "label_problem", "load_dataset", "make_record", "parse_problem", "possible_strata",
    "predicting_positions", "steps_text", "stratified_examples", "stratum_of",
    "write_dataset",
]
