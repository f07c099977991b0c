"""Trigger words in captions and prompts, the way ai-toolkit users write them.

A LoRA is usually meant to answer to one word. A dataset's `trigger_word` replaces the
`[trigger]` placeholder (and ai-toolkit's older `[name]`) in every caption and is put in front of
a caption that does not contain it, so every caption the model trains on carries the word.
Without a trigger word the placeholders are removed. Prompts that are only rendered (previews)
get the replacement but no prefix, as in ai-toolkit: a preview prompt without the word shows
what the LoRA does when it is not called.
"""

from __future__ import annotations

PLACEHOLDERS = ("[trigger]", "[name]")


def apply_trigger(text: str, trigger: str | None, *, add_if_missing: bool = True) -> str:
  """`text` with the placeholders replaced by `trigger`; with `add_if_missing`, the trigger
  is prepended when it does not occur in the text. Whitespace is collapsed afterwards (a
  removed placeholder leaves no double space)."""
  trigger = (trigger or "").strip()
  for placeholder in PLACEHOLDERS:
    text = text.replace(placeholder, trigger)
  if trigger and add_if_missing and trigger not in text:
    text = f"{trigger} {text}"
  return " ".join(text.split())
