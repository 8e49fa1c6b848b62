"""Local transformers backend: batched, length-grouped chat generation and option scoring."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .base import BackendError, Chat, Generation, SamplingParams, stripped


class HFBackend:
    """One loaded model. Chats are sorted by prompt length and cut into batches so that a batch
    holds prompts of similar length: left padding then wastes few positions."""

    engine = "hf"

    def __init__(
        self,
        model_path: str,
        *,
        batch_size: int = 32,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = str(model_path)
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device)
        except (OSError, ValueError) as exc:
            raise BackendError(_explain_load_failure(model_path, exc)) from None
        self.model.eval()
        self.dtype = str(dtype).removeprefix("torch.")
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def count_tokens(self, chat: Chat) -> int:
        return len(self._encode([chat])[0])

    # --- generation --------------------------------------------------------------------------

    def _encode(self, chats: list[Chat]) -> list[list[int]]:
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return ids, mask

    @torch.inference_mode()
    def generate(
        self, chats: list[Chat], params: SamplingParams, on_done: Callable[[int], object] | None = None
    ) -> list[Generation]:
        if not chats:
            return []
        encoded = self._encode(chats)
        order = sorted(range(len(chats)), key=lambda i: len(encoded[i]))
        results: list[Generation | None] = [None] * len(chats)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            ids, mask = self._pad_left([encoded[i] for i in batch])
            # Seed per batch position so that a resumed job draws the same way as a fresh one.
            torch.manual_seed(params.seed + start)
            begun = time.perf_counter()
            out = self.model.generate(input_ids=ids, attention_mask=mask, **self._generation_options(params))
            seconds = (time.perf_counter() - begun) / len(batch)
            for row, i in enumerate(batch):
                new = out[row, ids.shape[1] :].tolist()
                n = next((k for k, t in enumerate(new) if t in self._stop_ids), len(new))
                results[i] = Generation(
                    text=self.tokenizer.decode(new[:n], skip_special_tokens=True).strip(),
                    prompt_tokens=len(encoded[i]),
                    completion_tokens=n,
                    seconds=seconds,
                )
            if on_done:
                on_done(len(batch))
        return results  # type: ignore[return-value]

    def stream(self, chat: Chat, params: SamplingParams) -> Iterator[str]:
        """One chat's answer piece by piece (`base.stream`): `generate` runs in a thread and hands each decoded
        piece over as it comes. Seeded as `generate` seeds a one-chat call, so the pieces join into its text."""
        from transformers import TextIteratorStreamer

        [encoded] = self._encode([chat])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        torch.manual_seed(params.seed)
        failure: list[BaseException] = []

        @torch.inference_mode()
        def run() -> None:
            try:
                self.model.generate(
                    input_ids=torch.tensor([encoded], device=self.device),
                    attention_mask=torch.ones(1, len(encoded), dtype=torch.long, device=self.device),
                    streamer=streamer,
                    **self._generation_options(params),
                )
            except BaseException as exc:  # raised again in the caller's thread, after the streamer ends
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from stripped(streamer)
        worker.join()
        if failure:
            raise failure[0]

    def _generation_options(self, params: SamplingParams) -> dict:
        return {
            "max_new_tokens": params.max_new_tokens,
            "min_new_tokens": params.min_new_tokens or None,
            "do_sample": params.temperature > 0,
            "temperature": params.temperature if params.temperature > 0 else None,
            "top_p": params.top_p if params.temperature > 0 else None,
            "top_k": None,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self._stop_ids,
        }

    # --- scoring -----------------------------------------------------------------------------

    def score_options(self, chats: list[Chat], options: list[str]) -> list[list[float]]:
        """Sum of log P(option tokens | chat + assistant prefix) for each chat and option.

        Single-token options (the judge's "A"/"B") are read from one next-token distribution per chat,
        and two neighbouring chats (a question in both orders) share one pass over their common start."""
        option_ids = [self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
        if any(not ids for ids in option_ids):
            raise ValueError("every option must encode to at least one token")
        prefixes = self._encode(chats)
        if all(len(ids) == 1 for ids in option_ids):
            return self._score_next_token(prefixes, [ids[0] for ids in option_ids])
        return self._score_sequences(prefixes, option_ids)

    @torch.inference_mode()
    def _score_sequences(self, prefixes: list[list[int]], option_ids: list[list[int]]) -> list[list[float]]:
        """One pass per chat and option. Sequences are left-padded so that every option ends at the last
        position; only the last few positions go through the output head, which keeps memory at
        batch x options x vocab instead of batch x length x vocab."""
        rows = [(c, o) for c in range(len(prefixes)) for o in range(len(option_ids))]
        scores = [[0.0] * len(option_ids) for _ in prefixes]
        rows.sort(key=lambda co: len(prefixes[co[0]]) + len(option_ids[co[1]]))
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            seqs = [prefixes[c] + option_ids[o] for c, o in batch]
            ids, mask = self._pad_left(seqs)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(len(option_ids[o]) for _, o in batch) + 1
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, (c, o) in enumerate(batch):
                target = option_ids[o]
                m = len(target)
                # logits at kept index j predict the token at kept index j + 1
                picked = logprobs[row, keep - 1 - m : keep - 1].gather(
                    -1, torch.tensor(target, device=self.device)[:, None]
                )
                scores[c][o] = float(picked.sum())
        return scores

    @torch.inference_mode()
    def _score_next_token(self, prefixes: list[list[int]], token_ids: list[int]) -> list[list[float]]:
        """Two neighbouring chats at a time: their shared start in one pass, then both tails on a copy each
        of its cache (an odd last chat is paired with itself). Batching pairs would pad every prefix and
        tail to the longest in the batch; on hh-rlhf that wastes more than sharing saves (32 pairs, 2 cores:
        18 s one pair at a time, 35 s sixteen at a time, 26 s for full chats batched by 16 without sharing)."""
        out: list[list[float]] = []
        for start in range(0, len(prefixes), 2):
            first, second = prefixes[start], prefixes[min(start + 1, len(prefixes) - 1)]
            shared = _shared_length(first, second)
            prefix = self.model(
                input_ids=torch.tensor([first[:shared]], device=self.device), use_cache=True, logits_to_keep=1
            )
            cache = prefix.past_key_values
            cache.batch_repeat_interleave(2)  # one copy of the shared start per chat
            tail_ids, tail_mask = self._pad_left([first[shared:], second[shared:]])
            # The shorter tail's padding sits between prefix and tail: the mask hides it, positions skip it.
            mask = torch.cat([torch.ones(2, shared, dtype=tail_mask.dtype, device=tail_mask.device), tail_mask], 1)
            logits = self.model(
                input_ids=tail_ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1)[:, shared:],
                past_key_values=cache,
                logits_to_keep=1,
            ).logits
            picked = torch.log_softmax(logits[:, -1].float(), dim=-1)[:, token_ids]
            out += picked.tolist()[: len(prefixes) - start]
        return out


def _shared_length(a: list[int], b: list[int]) -> int:
    """Tokens two chats share at the start, leaving each at least one of its own (its last position
    gives the answer's logits) and the prefix at least one (the chat template's start always agrees)."""
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return max(n, 1)


def stop_token_ids(tokenizer, generation_config) -> list[int]:
    """Where an answer ends: the model's generation config's end tokens and the tokenizer's."""
    ids = generation_config.eos_token_id if generation_config else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _explain_load_failure(model_path: str, exc: Exception) -> str:
    looks_local = model_path.startswith((".", "/", "~")) or Path(model_path).exists() or model_path.count("/") != 1
    if looks_local and not Path(model_path).expanduser().exists():
        return f"model path {model_path!r} does not exist"
    if looks_local:
        return f"{model_path!r} is not a loadable transformers model folder: {exc}"
    return (
        f"could not load {model_path!r}: it is not a local folder and the model hub could not provide it "
        f"(offline?). Download it where you have access and pass the folder instead. ({type(exc).__name__})"
    )
