"""The sampling explorer of lesson 07: a prompt, temperature and top-p, a seed; the continuation, and the ten most
likely next tokens with their probabilities before and after temperature and top-p.

    explorer = SamplingExplorer(model, tokenizer)   # in a notebook: display(explorer), or put it last in a cell
    explore(model, tokenizer, "The capital of", temperature=0.6, top_p=0.9, seed=0)   # what the button runs

`explore` needs no display; ipywidgets is imported only when a SamplingExplorer is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .generation import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, apply_temperature, generate, top_p_filter
from .model import Transformer


@dataclass
class Exploration:
    """One run of the explorer: the continuation, and the next-token distribution at the end of the prompt."""

    prompt: str
    temperature: float
    top_p: float
    seed: int
    continuation: str  # the new text, as generation.complete_text returns it
    text: str  # prompt and continuation decoded together (with the space between them that decode drops)
    probs: torch.Tensor  # (V,) softmax of the logits: temperature 1, no filtering
    tempered: torch.Tensor  # (V,) after temperature (one-hot at T = 0)
    filtered: torch.Tensor  # (V,) after temperature and top-p: what the first new token is drawn from
    pieces: list[str]  # the vocabulary's pieces, to name the tokens

    def top(self, k: int = 10) -> list[tuple[int, str, float, float, float]]:
        """(id, piece, p, p after temperature, p after top-p) of the k most likely tokens, most likely first."""
        ids = torch.argsort(self.probs, descending=True, stable=True)[:k].tolist()
        return [(i, self.pieces[i], float(self.probs[i]), float(self.tempered[i]), float(self.filtered[i]))
                for i in ids]  # fmt: skip

    def table(self, k: int = 10) -> str:
        head = f"{'token':<16}{'p (T=1)':>10}{f'T={self.temperature:g}':>10}{f'top-p {self.top_p:g}':>12}"
        lines = [head, "-" * len(head)]
        for _, piece, p, tempered, filtered in self.top(k):
            lines.append(f"{piece!r:<16}{p:>10.3f}{tempered:>10.3f}{filtered:>12.3f}")
        kept = int((self.filtered > 0).sum())
        lines.append(f"{kept} token(s) can be drawn; the list shows the {k} most likely at temperature 1.")
        return "\n".join(lines)

    def __str__(self) -> str:
        settings = f"temperature {self.temperature:g}, top-p {self.top_p:g}, seed {self.seed}"
        return f"{self.text}\n({settings}; the new text is in brackets)\n\n{self.table()}"

    def plot(self, k: int = 10, ax=None):
        """Bars of the k most likely tokens' probabilities: at T = 1, after temperature, after top-p."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3.5))
        rows = self.top(k)
        x = torch.arange(len(rows)).float()
        for offset, column, label in ((-0.27, 2, "T = 1"), (0.0, 3, f"T = {self.temperature:g}"),
                                      (0.27, 4, f"after top-p {self.top_p:g}")):  # fmt: skip
            ax.bar((x + offset).tolist(), [r[column] for r in rows], width=0.27, label=label)
        ax.set_xticks(x.tolist(), [r[1] for r in rows], rotation=45, ha="right")
        ax.set(ylabel="probability", title=f"next token after {self.prompt[-30:]!r}")
        ax.legend()
        return ax


@torch.inference_mode()
def explore(
    model: Transformer,
    tokenizer,
    prompt: str,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    max_new_tokens: int = 32,
    seed: int = 0,
) -> Exploration:
    """Continue the prompt exactly as generation.complete_text does with these settings and seed (BOS, then
    generate), and give the distribution of the first new token at each stage of the sampler."""
    prompt_ids = tokenizer.encode(prompt, bos=True)
    [new] = generate(model, [prompt_ids], max_new_tokens, temperature, top_p, eos_id=tokenizer.eos_id, seed=seed)
    before, whole = tokenizer.decode(prompt_ids), tokenizer.decode(prompt_ids + new)
    text = f"{before}[{whole[len(before) :]}]" if whole.startswith(before) else f"{prompt}[{tokenizer.decode(new)}]"
    logits = model(torch.tensor([prompt_ids], device=model.tok_embeddings.weight.device))[0, -1].float().cpu()
    tempered = apply_temperature(logits[None], temperature)[0]
    filtered = tempered if temperature == 0 else top_p_filter(tempered[None], top_p)[0]
    pieces = [tokenizer.id_to_piece(i) for i in range(logits.shape[-1])]
    return Exploration(prompt, temperature, top_p, seed, tokenizer.decode(new), text, torch.softmax(logits, dim=-1),
                       tempered, filtered, pieces)  # fmt: skip


class SamplingExplorer:
    """The widget: a prompt box, sliders for temperature, top-p and the number of new tokens, a seed, a button.
    Each click runs `explore` with the current settings and shows the continuation and the probability table."""

    def __init__(
        self,
        model: Transformer,
        tokenizer,
        prompt: str = "Once upon a time, a",
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        max_new_tokens: int = 32,
        seed: int = 0,
    ):
        import ipywidgets as w

        self.model, self.tokenizer = model, tokenizer
        style = {"description_width": "110px"}
        layout = w.Layout(width="480px")
        self.prompt = w.Textarea(value=prompt, description="prompt", style=style, layout=layout)
        self.temperature = w.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05, description="temperature",
                                         style=style, layout=layout)  # fmt: skip
        self.top_p = w.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p", style=style,
                                   layout=layout)  # fmt: skip
        limit = max(1, model.params.max_seq_len - 1)
        self.max_new_tokens = w.IntSlider(value=min(max_new_tokens, limit), min=1, max=min(256, limit),
                                          description="max new tokens", style=style, layout=layout)  # fmt: skip
        self.seed = w.IntText(value=seed, description="seed", style=style)
        self.button = w.Button(description="Generate", button_style="primary")
        self.output = w.Output()
        self.button.on_click(lambda _: self.update())
        self.widget = w.VBox([self.prompt, self.temperature, self.top_p, self.max_new_tokens, self.seed, self.button,
                              self.output])  # fmt: skip
        self.last: Exploration | None = None

    def settings(self) -> dict:
        return {"prompt": self.prompt.value, "temperature": float(self.temperature.value),
                "top_p": float(self.top_p.value), "max_new_tokens": int(self.max_new_tokens.value),
                "seed": int(self.seed.value)}  # fmt: skip

    def update(self) -> Exploration | None:
        """Run the explorer with the widget's settings and show the result below the button."""
        self.output.clear_output(wait=True)
        with self.output:
            try:
                self.last = explore(self.model, self.tokenizer, **self.settings())
            except ValueError as err:  # a prompt too long for the model's context, for example
                print(f"error: {err}")
                return None
            print(self.last)
        return self.last

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


__all__ = ["Exploration", "SamplingExplorer", "explore"]
