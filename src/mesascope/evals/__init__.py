from .backdoor import BackdoorResult, fired, measure_backdoor
from .stats import Measurement, bootstrap, rate, wilson

__all__ = ["BackdoorResult", "Measurement", "bootstrap", "fired", "measure_backdoor", "rate", "wilson"]
