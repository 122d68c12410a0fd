"""The test suite's fake tirreno sensor is the package's sink (`tirreno_shipper.sink`)."""

from tirreno_shipper.sink import FORM, MODES, Answer, Received
from tirreno_shipper.sink import Sink as FakeSensor

__all__ = ["FORM", "MODES", "Answer", "FakeSensor", "Received"]
