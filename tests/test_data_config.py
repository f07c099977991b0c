"""Dataset options: defaults, validation, and command-line overrides of `config.datasets[i]`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from wan_jax.data.config import dataset_config, resolutions, validate


def test_resolution_accepts_one_or_several():
  assert resolutions(dataset_config(resolution=512)) == [512]
  assert resolutions(dataset_config(resolution=[768, 512, 512])) == [512, 768]
  with pytest.raises(ValueError, match="resolution"):
    resolutions(dataset_config(resolution=8))


@pytest.mark.parametrize("key,value", [("missing_mask", "ignore"), ("caption_dropout_rate", 1.5),
                                       ("mask_min_value", 1.0), ("repeats", 0),
                                       ("frame_selection", "random")])
def test_impossible_settings_are_refused(key, value):
  with pytest.raises(ValueError, match=key):
    validate(dataset_config(**{key: value}), "datasets[0]")


def test_command_line_overrides_reach_each_dataset(tmp_path):
  (tmp_path / "cfg.py").write_text(textwrap.dedent("""
      import ml_collections
      from wan_jax.data.config import dataset_config
      def get_config(arg=None):
        c = ml_collections.ConfigDict()
        c.datasets = [dataset_config(folder_path="/a"), dataset_config(folder_path="/b")]
        return c
      """))
  (tmp_path / "main.py").write_text(textwrap.dedent("""
      from absl import app
      from ml_collections import config_flags
      from wan_jax.data.config import resolutions
      CONFIG = config_flags.DEFINE_config_file("config")
      def main(_):
        d0, d1 = CONFIG.value.datasets
        print(d0.folder_path, d1.num_frames, resolutions(d0), resolutions(d1))
      app.run(main)
      """))
  result = subprocess.run(
      [sys.executable, "main.py", "--config=cfg.py", "--config.datasets[0].folder_path=/data/x",
       "--config.datasets[1].num_frames=81", "--config.datasets[0].resolution=(480,720)",
       "--config.datasets[1].resolution=256"],
      capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split("\n")[0] == "/data/x 81 [480, 720] [256]"
