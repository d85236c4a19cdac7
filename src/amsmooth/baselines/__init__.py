"""Inference-time baselines the paper compares against (Sec. 4.1): blacklist word removal and POSI rewriting."""
from .blacklist import Blacklist
from .posi import CausalLMRewriter, PromptRewriter

__all__ = ["Blacklist", "CausalLMRewriter", "PromptRewriter"]
