"""hiercam: better class activation maps from classifiers trained on a hierarchy of class groups.

An implementation of Meng et al., "Hierarchical class grouping with orthogonal constraint for class
activation map generation" (Neural Computing and Applications, 2020), as small composable PyTorch parts.

The root re-exports the public names of the component packages, and only those: its list is built from their
own ``__all__`` lists, so a name added to a package is exported here without a second copy.

* ``hiercam.grouping``: class similarity (Eq. 1), hierarchical K-means (Eq. 2-3), seed-free grouping sources
  and the agreement between hierarchies; ``hiercam.hierarchy``: the ``ClassHierarchy`` type;
* ``hiercam.models``: the two-branch network (section 3.4.1), level heads, backbones, the model factory;
  ``hiercam.losses``: the orthogonal loss (Eq. 4-5) and the training losses;
* ``hiercam.cam``: the CAM engine (section 3.4.2) and every method; ``hiercam.maps``: normalising, resizing
  and boxes of maps; ``hiercam.fusion``: Eq. 6; ``hiercam.protocols``: what the engine reads of a model;
* ``hiercam.metrics``: mIoU, localisation error, the WSOL and faithfulness metrics;
* ``hiercam.datasets``: FashionScenes (bundled), your own folder, MSRC-21, VOC;
* ``hiercam.training``: ``fit``, ``evaluate``.

``hiercam.pipeline`` (the resumable experiment runner), ``hiercam.viz`` (matplotlib) and ``hiercam.cli`` are
imported as modules; they are not re-exported here.
"""

from hiercam import (
    cam,
    datasets,
    fusion,
    grouping,
    hierarchy,
    losses,
    maps,
    metrics,
    models,
    training,
)
from hiercam._validation import checks, checks_enabled, set_checks
from hiercam._version import __version__
from hiercam.cam import *  # noqa: F403
from hiercam.datasets import *  # noqa: F403
from hiercam.fusion import *  # noqa: F403
from hiercam.grouping import *  # noqa: F403
from hiercam.hierarchy import *  # noqa: F403
from hiercam.losses import *  # noqa: F403
from hiercam.maps import *  # noqa: F403
from hiercam.metrics import *  # noqa: F403
from hiercam.models import *  # noqa: F403
from hiercam.training import *  # noqa: F403

# The value-check switch (hiercam._validation) is the one root-level feature of its own.
__all__ = ["__version__", "checks", "checks_enabled", "set_checks"]
__all__ += grouping.__all__
__all__ += hierarchy.__all__
__all__ += maps.__all__
__all__ += losses.__all__
__all__ += models.__all__  # holds the protocols' TwoBranchOutput
__all__ += cam.__all__  # holds the protocols' CAMHead and MultiHeadModel
__all__ += fusion.__all__
__all__ += metrics.__all__
__all__ += datasets.__all__
__all__ += training.__all__
