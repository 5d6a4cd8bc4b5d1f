"""Chains: langchain-core Runnables that return typed objects from a local model."""

from castline.chains.base import Chain
from castline.chains.chat_model import CastlineChatModel
from castline.chains.classify import Classify, MultiLabelClassify
from castline.chains.extract import Extract
from castline.chains.ner import RecognizeEntities
from castline.chains.qa import AnswerQuestion
from castline.chains.structured import StructuredChain, default_model
from castline.chains.summarize import Summarize
from castline.chains.translate import Translate

__all__ = [
    "AnswerQuestion",
    "CastlineChatModel",
    "Chain",
    "Classify",
    "Extract",
    "MultiLabelClassify",
    "RecognizeEntities",
    "StructuredChain",
    "Summarize",
    "Translate",
    "default_model",
]
