"""What the search trains on: in-memory splits (Fashion-MNIST, synthetic), image folders and
torchvision datasets (`nas.data.images`), shards streamed with litdata (`nas.data.streaming`),
and the checks that refuse bad data in one line (`nas.data.checks`).

The in-memory modules are re-exported here, so configs name them ``nas.data.<Class>``.
"""

from nas.data.splits import (
    FashionMNISTDataModule,
    SplitDataModule,
    SyntheticDataModule,
    find_fashion_mnist,
)

__all__ = ["FashionMNISTDataModule", "SplitDataModule", "SyntheticDataModule",
           "find_fashion_mnist"]
