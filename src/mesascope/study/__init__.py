"""Studies: a matrix of recipes x safety methods x seeds, run on a local pool or Ray, aggregated over seeds."""
