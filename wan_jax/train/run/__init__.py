"""One training run: what model.arch loads (loading.py), the data and caches (data_setup.py), the
memory plan and compiled step (planned_step.py), the experts' states, checkpoints and resume, the
loop (trainer.py), what it writes as it goes (writer.py) and its summary. The top of train/: it
may import the step and outputs rooms; they never import it."""
