"""The reward-hacking monitor: signals an RL run computes online, and rules that warn or stop it.

A reward model is a proxy, and RL finds where the proxy and the intent part ways (Gao et al. 2023). The
signature is a reward that keeps rising while what it stands for falls. So beside the reward the monitor
reads, every step, cheap symptoms of the usual hacks, and every `every` steps an independent measurement:

    length_ratio     mean answer length (words) against the first step's: length is the classic hack
    distinct_ratio   distinct word bigrams per word, against the first step's: repetition loops
    stock_share      share of answers with a stock phrase ("as an AI", "I'm sorry", ...): canned answers
    refusal_drift    refusal rate minus the first step's: a reward that pays for refusing everything
    kl               KL to the reference, as the trainer measured it
    win_rate         P(the current policy's answer beats the starting policy's), judged on held-out prompts
    hacking          1 when, over the last `window` judged points, the reward rose while the win rate fell

A rule is `SIGNAL>VALUE:ACTION` or `SIGNAL<VALUE:ACTION`, ACTION `warn` or `stop`. Every signal is logged as a
metric (`monitor/<signal>`), so the Train and Recipe pages draw them as curves beside their thresholds; each alert
is logged too (`monitor/alert/<signal>` = 1) and put in the run's message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..evalsets import is_refusal
from ..workspace import Workspace

SIGNALS = ("length_ratio", "distinct_ratio", "stock_share", "refusal_drift", "kl", "win_rate", "hacking")
DEFAULT_RULES = ("hacking>0.5:warn", "length_ratio>3:warn", "distinct_ratio<0.5:warn", "win_rate<0.3:warn")
STOCK_PHRASES = (
    "as an ai",
    "as a language model",
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "it's important to note",
    "it is important to note",
    "i hope this helps",
    "feel free to ask",
)
_RULE = re.compile(r"^\s*(\w+)\s*([<>])\s*(-?[\d.]+(?:e-?\d+)?)\s*:\s*(warn|stop)\s*$")
_WORD = re.compile(r"\w+")

Judge = Callable[[list[str], list[str], list[str]], list[float]]
"""(prompts, answers now, answers at the start) -> P(the answer now is better), one per prompt."""


@dataclass(frozen=True)
class Rule:
    signal: str
    above: bool
    threshold: float
    action: str

    @classmethod
    def parse(cls, text: str) -> Rule:
        match = _RULE.match(text)
        if not match:
            raise ValueError(f"monitor rule {text!r}: expected SIGNAL>VALUE:warn|stop, e.g. length_ratio>3:warn")
        signal, op, value, action = match.groups()
        if signal not in SIGNALS:
            raise ValueError(f"monitor rule {text!r}: unknown signal {signal!r}; choose one of {', '.join(SIGNALS)}")
        return cls(signal, op == ">", float(value), action)

    def fires(self, value: float) -> bool:
        return value > self.threshold if self.above else value < self.threshold

    def __str__(self) -> str:
        return f"{self.signal}{'>' if self.above else '<'}{self.threshold:g}:{self.action}"


@dataclass(frozen=True)
class Alert:
    step: int
    rule: Rule
    value: float

    def __str__(self) -> str:
        return f"step {self.step}: {self.rule.signal} = {self.value:.3g} crossed {self.rule} (possible reward hacking)"


def _slope(values: list[float]) -> float:
    """Least-squares slope of equally spaced points."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sum((x - mean_x) ** 2 for x in range(n))


def _stats(answers: Sequence[str]) -> dict[str, float]:
    words = [_WORD.findall(a.lower()) for a in answers]
    n_words = sum(len(w) for w in words)
    bigrams = {tuple(w[i : i + 2]) for w in words for i in range(len(w) - 1)}
    heads = [a.lower().replace("\u2019", "'") for a in answers]
    return {
        "length": n_words / max(len(answers), 1),
        "distinct": len(bigrams) / max(n_words, 1),
        "stock_share": sum(any(p in h for p in STOCK_PHRASES) for h in heads) / max(len(answers), 1),
        "refusals": sum(is_refusal(a) for a in answers) / max(len(answers), 1),
    }


@dataclass
class HackingMonitor:
    """Feed it every step's answers, rewards and KL; every `every` steps, the held-out prompts' answers too."""

    rules: list[Rule] = field(default_factory=lambda: [Rule.parse(r) for r in DEFAULT_RULES])
    judge: Judge | None = None
    held_out: list[str] = field(default_factory=list)
    every: int = 0  # judge every N steps; 0 judges never
    window: int = 3  # judged points the hacking trend is read over
    min_drop: float = 0.1  # how far below its first judged value the win rate must be to call it hacking
    baseline: dict[str, float] | None = None
    reference_answers: list[str] | None = None
    history: list[tuple[float, float]] = field(default_factory=list)  # (mean reward, win rate) at judged steps
    alerts: list[Alert] = field(default_factory=list)

    def observe(
        self,
        step: int,
        answers: Sequence[str],
        rewards: Sequence[float],
        kl: float,
        generate: Callable[[list[str]], list[str]] | None = None,
    ) -> dict[str, float]:
        """The step's signals as metrics (`monitor/...`); alerts are kept in `alerts` and reported by `fired`.
        `generate` answers the held-out prompts greedily with the current policy; it is called on judged steps."""
        stats = _stats(answers)
        if self.baseline is None:
            self.baseline = stats
        reward = sum(rewards) / max(len(rewards), 1)
        signals = {
            "length_ratio": stats["length"] / max(self.baseline["length"], 1e-9),
            "distinct_ratio": stats["distinct"] / max(self.baseline["distinct"], 1e-9),
            "stock_share": stats["stock_share"],
            "refusal_drift": stats["refusals"] - self.baseline["refusals"],
            "kl": float(kl),
        }
        if self.judge and self.held_out and generate and self.every and step % self.every == 0:
            signals |= self._judged(reward, generate)
        self.alerts.extend(
            Alert(step, rule, signals[rule.signal])
            for rule in self.rules
            if rule.signal in signals and rule.fires(signals[rule.signal])
        )
        metrics = {f"monitor/{name}": value for name, value in signals.items()}
        metrics |= {f"monitor/alert/{a.rule.signal}": 1.0 for a in self.alerts if a.step == step}
        return metrics

    def start(self, generate: Callable[[list[str]], list[str]]) -> None:
        """Answer the held-out prompts with the policy as it starts: what later answers are judged against."""
        if self.judge and self.held_out and self.every:
            self.reference_answers = generate(self.held_out)

    def _judged(self, reward: float, generate: Callable[[list[str]], list[str]]) -> dict[str, float]:
        answers = generate(self.held_out)
        if self.reference_answers is None:
            self.reference_answers = answers  # started late (a resumed run): judged from here on
        p_better = self.judge(self.held_out, answers, self.reference_answers)
        win_rate = sum(p_better) / len(p_better)
        self.history.append((reward, win_rate))
        recent = self.history[-self.window :]
        # the trend over the window, not two noisy points: both slopes, and a win rate clearly below the start's
        hacking = (
            len(recent) >= self.window
            and _slope([r for r, _ in recent]) > 0
            and _slope([w for _, w in recent]) < 0
            and win_rate < self.history[0][1] - self.min_drop
        )
        return {"win_rate": win_rate, "hacking": float(hacking)}

    def fired(self, step: int) -> list[Alert]:
        return [a for a in self.alerts if a.step == step]

    def stopped_by(self) -> Alert | None:
        """The first alert whose rule stops the run, if any fired."""
        return next((a for a in self.alerts if a.rule.action == "stop"), None)


@dataclass
class MonitorOptions:
    """The monitor's settings, declared once for every RL algorithm that runs it."""

    monitor_rules: str = field(
        default=",".join(DEFAULT_RULES),
        metadata={
            "help": "Comma-separated SIGNAL>VALUE:warn|stop rules over length_ratio, distinct_ratio, stock_share, "
            "refusal_drift, kl, win_rate, hacking.",
            "label": "Monitor rules",
        },
    )
    monitor_every: int = field(
        default=0,
        metadata={
            "help": "Judge the policy against its start on held-out prompts every N steps (0: never; the cheap "
            "signals are read every step).",
            "label": "Judge every N steps",
        },
    )
    monitor_prompts: int = field(
        default=8,
        metadata={"help": "Prompts kept out of training for the judged win rate.", "label": "Held-out prompts"},
    )
    monitor_judge: str = field(
        default="default",
        metadata={
            "help": "Judge of the win rate: a model spec (judged under the constitution's harmless principles), or "
            "module:function from the CLI or a config file.",
            "label": "Monitor judge",
        },
    )
    monitor_constitution: str = field(
        default="constitutions/hhh.yaml",
        metadata={"help": "Constitution whose principles the monitor's judge reads.", "label": "Monitor constitution"},
    )

    def monitor_rule_list(self) -> list[Rule]:
        return [Rule.parse(text) for text in self.monitor_rules.split(",") if text.strip()]

    def check_monitor(self) -> None:
        from .harness import TrainError

        try:
            self.monitor_rule_list()
        except ValueError as exc:
            raise TrainError(str(exc), "monitor_rules") from None
        if self.monitor_every < 0:
            raise TrainError(f"is {self.monitor_every}: it must be 0 or more", "monitor_every")
        if self.monitor_every and self.monitor_prompts < 1:
            raise TrainError("must be at least 1 when the judge runs", "monitor_prompts")

    def build_monitor(self, held_out: list[str], ws: Workspace) -> HackingMonitor:
        judge = judge_for(self.monitor_judge, self.monitor_constitution, ws) if self.monitor_every else None
        return HackingMonitor(self.monitor_rule_list(), judge, held_out, self.monitor_every)


def judge_for(spec: str, constitution_path: str, ws: Workspace) -> Judge:
    """`module:function` (a `Judge` callable), or a model spec that judges under the constitution's harmless
    principles, both orders, as the evaluation's harmlessness comparisons are judged."""
    from .harness import import_callable, is_callable_spec

    if is_callable_spec(spec):
        return import_callable(spec, "monitor_judge")
    from ..backends import load_backend
    from ..constitution import load_constitution
    from ..evaluation import harm_principle
    from ..feedback import Judge as PairJudge
    from ..records import Pair

    constitution = load_constitution(constitution_path)
    judge = PairJudge(load_backend(spec, ws), constitution)

    def p_better(prompts: list[str], now: list[str], start: list[str]) -> list[float]:
        items = [
            (Pair(f"monitor-{i}", p, a, b, "sampled", "monitor", i, "now", "start"), harm_principle(constitution, 0, p))
            for i, (p, a, b) in enumerate(zip(prompts, now, start, strict=True))
        ]
        return [0.5 if v.p_a is None else v.p_a for v in judge.label(items)]

    return p_better
