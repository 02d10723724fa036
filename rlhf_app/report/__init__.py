"""Run reports: report.html and plots/ built from a run folder alone (page), its figures (plots), an
SFT / reward-model stage's sections (stage), and a pipeline's page linking its stages (pipeline)."""
