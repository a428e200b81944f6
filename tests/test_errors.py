"""skuniad's own errors share one base class besides their built-in kind."""

import numpy as np
import pytest

from skuniad.datasets.folders import DuplicateFolderNameError
from skuniad.device import DeviceOutOfMemoryError
from skuniad.errors import InputTypeError, ModelFileError, SkuniadError
from skuniad.io import ImageLoadError, check_images
from skuniad.weights import BackboneWeightsError


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InputTypeError, TypeError),
        (ImageLoadError, ValueError),
        (BackboneWeightsError, RuntimeError),
        (DeviceOutOfMemoryError, MemoryError),
        (DuplicateFolderNameError, ValueError),
        (ModelFileError, ValueError),
    ],
)
def test_every_library_error_is_a_skuniad_error_of_its_kind(error, kind):
    assert issubclass(error, SkuniadError) and issubclass(error, kind)


def test_a_wrong_input_type_is_told_apart_from_a_bug():
    with pytest.raises(SkuniadError) as caught:
        check_images("one.png")
    assert isinstance(caught.value, TypeError) and "single path" in str(caught.value)
    with pytest.raises(TypeError) as bug:
        np.zeros(3) + None
    assert not isinstance(bug.value, SkuniadError)
