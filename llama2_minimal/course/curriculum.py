"""The course's lessons: one table that lesson 00 draws and the tests hold the notebooks to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lesson:
    number: int
    name: str  # the notebook's file name without .ipynb
    title: str
    builds: str
    reproduces: str  # the paper's section, figure or table


LESSONS = [
    Lesson(0, "00_the_map", "The map", "the recipe, the lessons, how exercises are validated", "Fig 4"),
    Lesson(1, "01_tokenizer", "Tokenizer", "BPE from scratch; SentencePiece BPE with split digits and byte fallback",
           "§2.2"),
    Lesson(2, "02_building_blocks", "Building blocks", "RMSNorm, SwiGLU and its hidden-size rule, pre-norm", "§2.2"),
    Lesson(3, "03_rotary_embeddings", "Rotary embeddings",
           "complex and rotate-half forms, the q/k permutation between them", "§2.2"),
    Lesson(4, "04_attention_and_gqa", "Attention and GQA",
           "causal attention, MHA/MQA/GQA, repeat_kv, KV-cache memory for 7B-70B", "Table 18"),
    Lesson(5, "05_the_llama_model", "The Llama model",
           "assembly, parameter counts, parity with Hugging Face, Meta and HF checkpoints", "Table 1"),
    Lesson(6, "06_pretraining", "Pretraining",
           "cleaning, packing, AdamW and the cosine schedule, loss curves, memorisation, torchrun", "§2.2, Fig 5"),
    Lesson(7, "07_inference", "Inference", "KV-cache decoding, temperature and top-p, the chat format",
           "generation.py"),
    Lesson(8, "08_supervised_fine_tuning", "Supervised fine-tuning",
           "chat template, answer-only loss, base vs SFT, data quality", "§3.1"),
    Lesson(9, "09_reward_modelling", "Reward modelling",
           "preference data, scalar head, margin loss, accuracy by strength", "Tables 7, 8, 27, 28"),
    Lesson(10, "10_rejection_sampling", "Rejection sampling", "best-of-K, reward vs K and temperature", "Figs 7, 8"),
    Lesson(11, "11_ppo", "PPO", "combined reward with the safety gate, KL penalty, clipped objective", "§3.2.3"),
    Lesson(12, "12_ghost_attention", "Ghost Attention", "multi-turn instruction following, GAtt data",
           "Figs 9, 10, Table 30"),
    Lesson(13, "13_safety", "Safety", "safety SFT and RLHF, context distillation, violation and false refusal",
           "Figs 14-16, Table 13"),
    Lesson(14, "14_evaluation", "Evaluation and insights",
           "likelihood-scored choices, judge win rates, temperature rescaling", "§2.3, Figs 21-23"),
]  # fmt: skip
