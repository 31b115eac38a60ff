"""Tables, plots, the results and unlearning pages."""
