"""LeNet-5 for 28x28 grayscale digits (Keras 3)."""

import keras


def build_lenet(num_classes: int = 10) -> keras.Model:
    """LeNet-5: two conv/pool stages, three dense layers. Input (28, 28) float32 in [0, 1]."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28), name="image"),
            keras.layers.Reshape((28, 28, 1)),
            keras.layers.Conv2D(6, 5, padding="same", activation="relu"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(16, 5, activation="relu"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(120, activation="relu"),
            keras.layers.Dense(84, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax", name="probabilities"),
        ],
        name="lenet",
    )
