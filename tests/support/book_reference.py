"""The book's classes written out in plain NumPy, from its formulas: the independent reference
the gpunn.book ports are checked against (tests/test_book.py). Data and weights are drawn from
NumPy's global generator in the book's order; ``Model`` prints chapter 18's lines without a batch
size and chapter 19's with one."""

from __future__ import annotations

import numpy as np

CLIP = 1e-7


def init(random_seed=0):
    np.random.seed(random_seed)


def spiral_data(samples, classes):
    X = np.zeros((samples * classes, 2))
    y = np.zeros(samples * classes, dtype="uint8")
    for c in range(classes):
        rows = range(samples * c, samples * (c + 1))
        radius = np.linspace(0.0, 1, samples)
        angle = np.linspace(c * 4, (c + 1) * 4, samples) + np.random.randn(samples) * 0.2
        X[rows] = np.c_[radius * np.sin(angle * 2.5), radius * np.cos(angle * 2.5)]
        y[rows] = c
    return X, y


def vertical_data(samples, classes):
    X = np.zeros((samples * classes, 2))
    y = np.zeros(samples * classes, dtype="uint8")
    for c in range(classes):
        rows = range(samples * c, samples * (c + 1))
        X[rows] = np.c_[np.random.randn(samples) * 0.1 + c / 3, np.random.randn(samples) * 0.1 + 0.5]
        y[rows] = c
    return X, y


def sine_data(samples=1000):
    X = np.arange(samples).reshape(-1, 1) / samples
    return X, np.sin(2 * np.pi * X).reshape(-1, 1)


class Layer_Dense:
    def __init__(self, n_inputs, n_neurons, weight_regularizer_l1=0, weight_regularizer_l2=0,
                 bias_regularizer_l1=0, bias_regularizer_l2=0, *, weight_scale=0.01):
        self.weights = weight_scale * np.random.randn(n_inputs, n_neurons)
        self.biases = np.zeros((1, n_neurons))
        self.weight_regularizer_l1, self.weight_regularizer_l2 = weight_regularizer_l1, weight_regularizer_l2
        self.bias_regularizer_l1, self.bias_regularizer_l2 = bias_regularizer_l1, bias_regularizer_l2

    def forward(self, inputs, training=True):
        self.inputs = inputs
        self.output = np.dot(inputs, self.weights) + self.biases

    def backward(self, dvalues):
        self.dweights = np.dot(self.inputs.T, dvalues)
        self.dbiases = np.sum(dvalues, axis=0, keepdims=True)
        if self.weight_regularizer_l1 > 0:
            self.dweights += self.weight_regularizer_l1 * np.sign(self.weights)
        if self.weight_regularizer_l2 > 0:
            self.dweights += 2 * self.weight_regularizer_l2 * self.weights
        if self.bias_regularizer_l1 > 0:
            self.dbiases += self.bias_regularizer_l1 * np.sign(self.biases)
        if self.bias_regularizer_l2 > 0:
            self.dbiases += 2 * self.bias_regularizer_l2 * self.biases
        self.dinputs = np.dot(dvalues, self.weights.T)


class Layer_Dropout:
    def __init__(self, rate):
        self.keep = 1 - rate

    def forward(self, inputs, training=True):
        self.inputs = inputs
        if not training:
            self.output = inputs.copy()
            return
        self.binary_mask = np.random.binomial(1, self.keep, size=inputs.shape) / self.keep
        self.output = inputs * self.binary_mask

    def backward(self, dvalues):
        self.dinputs = dvalues * self.binary_mask


class Layer_Input:
    def forward(self, inputs, training=True):
        self.output = inputs


class Activation_ReLU:
    def forward(self, inputs, training=True):
        self.inputs = inputs
        self.output = np.maximum(0, inputs)

    def backward(self, dvalues):
        self.dinputs = dvalues.copy()
        self.dinputs[self.inputs <= 0] = 0

    def predictions(self, outputs):
        return outputs


class Activation_Softmax:
    def forward(self, inputs, training=True):
        self.inputs = inputs
        exp = np.exp(inputs - np.max(inputs, axis=1, keepdims=True))
        self.output = exp / np.sum(exp, axis=1, keepdims=True)

    def backward(self, dvalues):
        self.dinputs = np.empty_like(dvalues)
        for i, (output, dvalue) in enumerate(zip(self.output, dvalues)):
            output = output.reshape(-1, 1)
            jacobian = np.diagflat(output) - np.dot(output, output.T)
            self.dinputs[i] = np.dot(jacobian, dvalue)

    def predictions(self, outputs):
        return np.argmax(outputs, axis=1)


class Activation_Sigmoid:
    def forward(self, inputs, training=True):
        self.inputs = inputs
        self.output = 1 / (1 + np.exp(-inputs))

    def backward(self, dvalues):
        self.dinputs = dvalues * (1 - self.output) * self.output

    def predictions(self, outputs):
        return (outputs > 0.5) * 1


class Activation_Linear:
    def forward(self, inputs, training=True):
        self.inputs = inputs
        self.output = inputs

    def backward(self, dvalues):
        self.dinputs = dvalues.copy()

    def predictions(self, outputs):
        return outputs


class Loss:
    def __init__(self):
        self.trainable_layers = []
        self.new_pass()

    def remember_trainable_layers(self, layers):
        self.trainable_layers = layers

    def regularization_loss(self, layer=None):
        total = 0
        for each in ([layer] if layer is not None else self.trainable_layers):
            if each.weight_regularizer_l1 > 0:
                total += each.weight_regularizer_l1 * np.sum(np.abs(each.weights))
            if each.weight_regularizer_l2 > 0:
                total += each.weight_regularizer_l2 * np.sum(each.weights * each.weights)
            if each.bias_regularizer_l1 > 0:
                total += each.bias_regularizer_l1 * np.sum(np.abs(each.biases))
            if each.bias_regularizer_l2 > 0:
                total += each.bias_regularizer_l2 * np.sum(each.biases * each.biases)
        return total

    def calculate(self, output, y, *, include_regularization=False):
        sample_losses = self.forward(output, y)
        data_loss = np.mean(sample_losses)
        self.accumulated_sum += np.sum(sample_losses)
        self.accumulated_count += len(sample_losses)
        if not include_regularization:
            return data_loss
        return data_loss, self.regularization_loss()

    def new_pass(self):
        self.accumulated_sum, self.accumulated_count = 0, 0

    def calculate_accumulated(self, *, include_regularization=False):
        data_loss = self.accumulated_sum / self.accumulated_count
        if not include_regularization:
            return data_loss
        return data_loss, self.regularization_loss()


class Loss_CategoricalCrossentropy(Loss):
    def forward(self, y_pred, y_true):
        clipped = np.clip(y_pred, CLIP, 1 - CLIP)
        if len(y_true.shape) == 1:
            confidences = clipped[range(len(y_pred)), y_true]
        else:
            confidences = np.sum(clipped * y_true, axis=1)
        return -np.log(confidences)

    def backward(self, dvalues, y_true):
        samples, labels = len(dvalues), len(dvalues[0])
        if len(y_true.shape) == 1:
            y_true = np.eye(labels)[y_true]
        self.dinputs = -y_true / dvalues / samples


class Activation_Softmax_Loss_CategoricalCrossentropy:
    def __init__(self):
        self.activation = Activation_Softmax()
        self.loss = Loss_CategoricalCrossentropy()

    def forward(self, inputs, y_true):
        self.activation.forward(inputs)
        self.output = self.activation.output
        return self.loss.calculate(self.output, y_true)

    def backward(self, dvalues, y_true):
        samples = len(dvalues)
        if len(y_true.shape) == 2:
            y_true = np.argmax(y_true, axis=1)
        self.dinputs = dvalues.copy()
        self.dinputs[range(samples), y_true] -= 1
        self.dinputs = self.dinputs / samples


class Loss_BinaryCrossentropy(Loss):
    def forward(self, y_pred, y_true):
        clipped = np.clip(y_pred, CLIP, 1 - CLIP)
        return np.mean(-(y_true * np.log(clipped) + (1 - y_true) * np.log(1 - clipped)), axis=-1)

    def backward(self, dvalues, y_true):
        samples, outputs = len(dvalues), len(dvalues[0])
        clipped = np.clip(dvalues, CLIP, 1 - CLIP)
        self.dinputs = -(y_true / clipped - (1 - y_true) / (1 - clipped)) / outputs / samples


class Loss_MeanSquaredError(Loss):
    def forward(self, y_pred, y_true):
        return np.mean((y_true - y_pred) ** 2, axis=-1)

    def backward(self, dvalues, y_true):
        samples, outputs = len(dvalues), len(dvalues[0])
        self.dinputs = -2 * (y_true - dvalues) / outputs / samples


class Optimizer:
    def pre_update_params(self):
        if self.decay:
            self.current_learning_rate = self.learning_rate * (1. / (1. + self.decay * self.iterations))

    def post_update_params(self):
        self.iterations += 1


def step(layer, lr, epsilon):
    """Adagrad's and RMSprop's update, from the layer's cache."""
    layer.weights += -lr * layer.dweights / (np.sqrt(layer.weight_cache) + epsilon)
    layer.biases += -lr * layer.dbiases / (np.sqrt(layer.bias_cache) + epsilon)


class Optimizer_SGD(Optimizer):
    def __init__(self, learning_rate=1., decay=0., momentum=0.):
        self.learning_rate = self.current_learning_rate = learning_rate
        self.decay, self.iterations, self.momentum = decay, 0, momentum

    def update_params(self, layer):
        if self.momentum:
            if not hasattr(layer, "weight_momentums"):
                layer.weight_momentums = np.zeros_like(layer.weights)
                layer.bias_momentums = np.zeros_like(layer.biases)
            lr = self.current_learning_rate
            weight_updates = self.momentum * layer.weight_momentums - lr * layer.dweights
            layer.weight_momentums = weight_updates
            bias_updates = self.momentum * layer.bias_momentums - lr * layer.dbiases
            layer.bias_momentums = bias_updates
        else:
            weight_updates = -self.current_learning_rate * layer.dweights
            bias_updates = -self.current_learning_rate * layer.dbiases
        layer.weights += weight_updates
        layer.biases += bias_updates


class Optimizer_Adagrad(Optimizer):
    def __init__(self, learning_rate=1., decay=0., epsilon=1e-7):
        self.learning_rate = self.current_learning_rate = learning_rate
        self.decay, self.iterations, self.epsilon = decay, 0, epsilon

    def update_params(self, layer):
        if not hasattr(layer, "weight_cache"):
            layer.weight_cache = np.zeros_like(layer.weights)
            layer.bias_cache = np.zeros_like(layer.biases)
        layer.weight_cache += layer.dweights ** 2
        layer.bias_cache += layer.dbiases ** 2
        step(layer, self.current_learning_rate, self.epsilon)


class Optimizer_RMSprop(Optimizer):
    def __init__(self, learning_rate=0.001, decay=0., epsilon=1e-7, rho=0.9):
        self.learning_rate = self.current_learning_rate = learning_rate
        self.decay, self.iterations, self.epsilon, self.rho = decay, 0, epsilon, rho

    def update_params(self, layer):
        if not hasattr(layer, "weight_cache"):
            layer.weight_cache = np.zeros_like(layer.weights)
            layer.bias_cache = np.zeros_like(layer.biases)
        layer.weight_cache = self.rho * layer.weight_cache + (1 - self.rho) * layer.dweights ** 2
        layer.bias_cache = self.rho * layer.bias_cache + (1 - self.rho) * layer.dbiases ** 2
        step(layer, self.current_learning_rate, self.epsilon)


class Optimizer_Adam(Optimizer):
    def __init__(self, learning_rate=0.001, decay=0., epsilon=1e-7, beta_1=0.9, beta_2=0.999):
        self.learning_rate = self.current_learning_rate = learning_rate
        self.decay, self.iterations, self.epsilon = decay, 0, epsilon
        self.beta_1, self.beta_2 = beta_1, beta_2

    def update_params(self, layer):
        if not hasattr(layer, "weight_cache"):
            for name in ("weight_momentums", "weight_cache"):
                setattr(layer, name, np.zeros_like(layer.weights))
            for name in ("bias_momentums", "bias_cache"):
                setattr(layer, name, np.zeros_like(layer.biases))
        t = self.iterations + 1
        for kind, grad in (("weight", layer.dweights), ("bias", layer.dbiases)):
            m = self.beta_1 * getattr(layer, f"{kind}_momentums") + (1 - self.beta_1) * grad
            v = self.beta_2 * getattr(layer, f"{kind}_cache") + (1 - self.beta_2) * grad ** 2
            setattr(layer, f"{kind}_momentums", m)
            setattr(layer, f"{kind}_cache", v)
            m_hat, v_hat = m / (1 - self.beta_1 ** t), v / (1 - self.beta_2 ** t)
            param = "weights" if kind == "weight" else "biases"
            setattr(layer, param, getattr(layer, param)
                    - self.current_learning_rate * m_hat / (np.sqrt(v_hat) + self.epsilon))


class Accuracy:
    def calculate(self, predictions, y):
        comparisons = self.compare(predictions, y)
        self.accumulated_sum += np.sum(comparisons)
        self.accumulated_count += comparisons.size
        return np.mean(comparisons)

    def new_pass(self):
        self.accumulated_sum, self.accumulated_count = 0, 0

    def calculate_accumulated(self):
        return self.accumulated_sum / self.accumulated_count


class Accuracy_Categorical(Accuracy):
    def __init__(self, *, binary=False):
        self.binary = binary
        self.new_pass()

    def init(self, y):
        pass

    def compare(self, predictions, y):
        if not self.binary and len(y.shape) == 2:
            y = np.argmax(y, axis=1)
        return predictions == y


class Accuracy_Regression(Accuracy):
    def __init__(self):
        self.precision = None
        self.new_pass()

    def init(self, y, reinit=False):
        if self.precision is None or reinit:
            self.precision = np.std(y) / 250

    def compare(self, predictions, y):
        return np.absolute(predictions - y) < self.precision


class Model:
    def __init__(self):
        self.layers = []

    def add(self, layer):
        self.layers.append(layer)

    def set(self, *, loss, optimizer, accuracy):
        self.loss, self.optimizer, self.accuracy = loss, optimizer, accuracy

    def finalize(self):
        self.trainable_layers = [layer for layer in self.layers if hasattr(layer, "weights")]
        self.output_layer_activation = self.layers[-1]
        self.loss.remember_trainable_layers(self.trainable_layers)
        self.fused = None
        if isinstance(self.layers[-1], Activation_Softmax) and \
                isinstance(self.loss, Loss_CategoricalCrossentropy):
            self.fused = Activation_Softmax_Loss_CategoricalCrossentropy()

    def forward(self, X, training):
        for layer in self.layers:
            layer.forward(X, training)
            X = layer.output
        return X

    def backward(self, output, y):
        if self.fused is not None:
            self.fused.backward(output, y)
            self.layers[-1].dinputs = self.fused.dinputs
            layers, dvalues = self.layers[:-1], self.fused.dinputs
        else:
            self.loss.backward(output, y)
            layers, dvalues = self.layers, self.loss.dinputs
        for layer in reversed(layers):
            layer.backward(dvalues)
            dvalues = layer.dinputs

    def _step(self, X, y):
        output = self.forward(X, training=True)
        data_loss, reg_loss = self.loss.calculate(output, y, include_regularization=True)
        accuracy = self.accuracy.calculate(self.output_layer_activation.predictions(output), y)
        self.backward(output, y)
        self.optimizer.pre_update_params()
        for layer in self.trainable_layers:
            self.optimizer.update_params(layer)
        self.optimizer.post_update_params()
        return accuracy, data_loss, reg_loss

    def _line(self, head, accuracy, data_loss, reg_loss):
        return (f"{head}acc: {accuracy:.3f}, loss: {data_loss + reg_loss:.3f} (data_loss: "
                f"{data_loss:.3f}, reg_loss: {reg_loss:.3f}), lr: {self.optimizer.current_learning_rate}")

    def train(self, X, y, *, epochs=1, batch_size=None, print_every=1, validation_data=None):
        self.accuracy.init(y)
        if batch_size is None:  # chapter 18
            for epoch in range(1, epochs + 1):
                accuracy, data_loss, reg_loss = self._step(X, y)
                if not epoch % print_every:
                    print(self._line(f"epoch: {epoch}, ", accuracy, data_loss, reg_loss))
            if validation_data is not None:
                self.evaluate(*validation_data)
            return
        steps = -(-len(X) // batch_size)  # chapter 19
        for epoch in range(1, epochs + 1):
            print(f"epoch: {epoch}")
            self.loss.new_pass()
            self.accuracy.new_pass()
            for step in range(steps):
                rows = slice(step * batch_size, (step + 1) * batch_size)
                accuracy, data_loss, reg_loss = self._step(X[rows], y[rows])
                if not step % print_every or step == steps - 1:
                    print(self._line(f"step: {step}, ", accuracy, data_loss, reg_loss))
            data_loss, reg_loss = self.loss.calculate_accumulated(include_regularization=True)
            print(self._line("training, ", self.accuracy.calculate_accumulated(), data_loss, reg_loss))
            if validation_data is not None:
                self.evaluate(*validation_data, batch_size=batch_size)

    def evaluate(self, X_val, y_val, *, batch_size=None):
        self.loss.new_pass()
        self.accuracy.new_pass()
        steps = 1 if batch_size is None else -(-len(X_val) // batch_size)
        size = len(X_val) if batch_size is None else batch_size
        for step in range(steps):
            rows = slice(step * size, (step + 1) * size)
            output = self.forward(X_val[rows], training=False)
            self.loss.calculate(output, y_val[rows])
            self.accuracy.calculate(self.output_layer_activation.predictions(output), y_val[rows])
        print(f"validation, acc: {self.accuracy.calculate_accumulated():.3f}, "
              f"loss: {self.loss.calculate_accumulated():.3f}")

    def predict(self, X, *, batch_size=None):
        return self.forward(X, training=False)

    def get_parameters(self):
        return [(layer.weights, layer.biases) for layer in self.trainable_layers]
