"""The course's widgets.

The sampling explorer of lesson 07: a prompt, temperature and top-p, a seed; the continuation, and the ten most
likely next tokens with their probabilities before and after temperature and top-p.

    explorer = SamplingExplorer(model, tokenizer)   # in a notebook: display(explorer), or put it last in a cell
    explore(model, tokenizer, "The capital of", temperature=0.6, top_p=0.9, seed=0)   # what the button runs

The chat comparison of lesson 10: one user message, several chat models (base, SFT, RLHF ...) answering it side by
side in Meta's chat format, each answer with the gold judge's helpfulness and safety when the message is one of
the world's prompts.

    ChatComparison({"SFT": (sft, tokenizer), "RLHF-V2": (v2, tokenizer)}, world=world)
    compare_chat(models, "Name the capital city of Lysvaess.", temperature=0.6, top_p=0.9, seed=0, world=world)

`explore` and `compare_chat` need no display; ipywidgets is imported only when a widget is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .generation import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, apply_temperature, generate, top_p_filter
from .model import Transformer
from .world import World
from .world.prompts import Prompt


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


# --- lesson 10: chat models side by side -------------------------------------------------------------------


@dataclass
class ChatAnswer:
    """One model's answer to the message, with the gold judge's scores (None when the judge does not know the
    message: it only scores the world's prompts)."""

    model: str  # the name the models dict gives it
    answer: str
    helpfulness: float | None = None
    safety: float | None = None

    def scores(self) -> str:
        if self.helpfulness is None:
            return "no judge score: not one of the world's prompts"
        return f"helpfulness {self.helpfulness:.2f}, safety {self.safety:.2f}"

    def __str__(self) -> str:
        return f"{self.model} ({self.scores()}): {self.answer!r}"


def world_prompt(world: World | None, message: str) -> Prompt | None:
    """The world's prompt the message asks (what the gold judge can score), or None."""
    if world is None:
        return None
    try:
        return world.judge.prompt_for([{"role": "user", "content": message}])
    except KeyError:  # the judge only knows the world's prompts
        return None


@torch.inference_mode()
def compare_chat(
    models: dict[str, tuple[Transformer, object]],
    message: str,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    seed: int = 0,
    world: World | None = None,
    max_new_tokens: int = 80,
) -> list[ChatAnswer]:
    """Each model's answer to one user message in Meta's chat format (evaluation.chat_answers, with the same
    settings and seed for every model), in the order of `models`, judged by the world's gold judge when the
    message is one of its prompts."""
    from .evaluation import chat_answers

    if not models:
        raise ValueError("no models to compare: give a dict such as {'SFT': (model, tokenizer)}")
    if not message.strip():
        raise ValueError("the message is empty: type a question for the models, or pick one of the world's prompts")
    dialog = [{"role": "user", "content": message}]
    prompt = world_prompt(world, message)
    out = []
    for name, (model, tokenizer) in models.items():
        [answer] = chat_answers(model, tokenizer, [dialog], max_new_tokens, temperature, top_p, seed=seed)
        scores = {}
        if prompt is not None:
            scores = {c: world.judge.score(c, dialog, answer) for c in ("helpfulness", "safety")}
        out.append(ChatAnswer(name, answer, **scores))
    return out


class ChatComparison:
    """The widget: a message box (and, given a world, a dropdown of its held-out prompts), sliders for temperature
    and top-p, a seed, a button. Each click runs `compare_chat` and shows the answers side by side."""

    def __init__(
        self,
        models: dict[str, tuple[Transformer, object]],
        world: World | None = None,
        message: str = "",
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        seed: int = 0,
        max_new_tokens: int = 80,
    ):
        import ipywidgets as w

        from .evaluation import chat_prompts

        if not models:
            raise ValueError("no models to compare: give a dict such as {'SFT': (model, tokenizer)}")
        self.models, self.world, self.max_new_tokens = dict(models), world, max_new_tokens
        style = {"description_width": "110px"}
        layout = w.Layout(width="600px")
        heldout = chat_prompts(world, "heldout") if world is not None else []
        options = [("(type your own message)", "")] + [(f"{p.kind}: {p.text}", p.text) for p in heldout]
        picked = message if message in {p.text for p in heldout} else ""
        self.prompt = w.Dropdown(options=options, value=picked, description="world prompt", style=style, layout=layout)
        self.message = w.Textarea(value=message, description="message", style=style, layout=layout)
        self.temperature = w.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05, description="temperature",
                                         style=style, layout=layout)  # fmt: skip
        self.top_p = w.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p", style=style,
                                   layout=layout)  # fmt: skip
        self.seed = w.IntText(value=seed, description="seed", style=style)
        self.button = w.Button(description="Ask every model", button_style="primary")
        self.output = w.HTML()
        self.prompt.observe(self._pick, names="value")
        self.button.on_click(lambda _: self.update())
        controls = [self.prompt] if world is not None else []
        self.widget = w.VBox([*controls, self.message, self.temperature, self.top_p, self.seed, self.button,
                              self.output])  # fmt: skip
        self.last: list[ChatAnswer] | None = None

    def _pick(self, change) -> None:
        if change["new"]:
            self.message.value = change["new"]

    def settings(self) -> dict:
        return {"message": self.message.value, "temperature": float(self.temperature.value),
                "top_p": float(self.top_p.value), "seed": int(self.seed.value)}  # fmt: skip

    def update(self) -> list[ChatAnswer] | None:
        """Ask every model with the widget's settings and show the answers side by side below the button."""
        import html

        try:
            self.last = compare_chat(self.models, world=self.world, max_new_tokens=self.max_new_tokens,
                                     **self.settings())  # fmt: skip
        except ValueError as err:  # an empty message, a message too long for the context, a chat tag inside it
            self.last = None
            self.output.value = f"<p style='color:#b00'>error: {html.escape(str(err))}</p>"
            return None
        columns = "".join(
            f"<div style='flex:1;min-width:180px;border:1px solid #ccc;border-radius:4px;padding:6px'>"
            f"<b>{html.escape(a.model)}</b><br><small>{html.escape(a.scores())}</small>"
            f"<p style='white-space:pre-wrap'>{html.escape(a.answer) or '<i>(empty answer)</i>'}</p></div>"
            for a in self.last
        )
        self.output.value = f"<div style='display:flex;gap:8px;align-items:flex-start'>{columns}</div>"
        return self.last

    def __str__(self) -> str:
        return "\n".join(str(a) for a in self.last or [])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


__all__ = ["ChatAnswer", "ChatComparison", "Exploration", "SamplingExplorer", "compare_chat", "explore",
           "world_prompt"]  # fmt: skip
