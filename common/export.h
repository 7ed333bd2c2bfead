/* Export of a trained model to formats other tools read: ONNX (opset 13) and NumPy
 * .npy files, one per tensor.
 *
 * The ONNX graph takes "input" [N][input_dim] float32, the rows fl-predict reads (an
 * image model reshapes them to [N][C][H][W] itself), and gives "output" [N][output_dim]:
 * what fl-predict writes (softmax: class probabilities; sigmoid_bce: the probability of
 * class 1; mse: the value).  Layers map to ONNX operators one to one: dense -> Gemm
 * (transB), conv -> Conv, pool:2 -> MaxPool, avgpool -> AveragePool or
 * GlobalAveragePool, batchnorm -> BatchNormalization (inference, epsilon 1e-5), relu,
 * sigmoid, tanh -> Relu, Sigmoid, Tanh; dropout is the identity at inference and gives
 * no node; a dense layer after an image gets a Flatten.  With a feature transform
 * (standardisation, modelfile.h) the graph starts with (input - mean) / std, so it takes
 * raw features as fl-predict does.  The file is built with protobuf-c from ONNX's own
 * schema (onnx.proto of Debian's libonnx-dev).
 *
 * Tensor names, in ONNX initializers and .npy file names alike: "l<I>_<type>.<part>",
 * I the layer's position in the spec from 0 (the input token not counted), part
 * weight or bias (batchnorm: weight = gamma, bias = beta, running_mean, running_var).
 * Shapes: dense weight [out][in], conv weight [K][C][F][F], the others one dimension.
 * The transform's tensors are "input.mean" and "input.std". */
#ifndef FL_EXPORT_H
#define FL_EXPORT_H

#include <stddef.h>

#include "model.h"

/* A tensor of a model, as named above.  shape[0..rank) */
typedef struct fl_tensor_info {
  char name[48];
  int rank;
  size_t shape[4];
  size_t offset;      /* in the flat parameter buffer */
  size_t size;        /* floats */
} fl_tensor_info;

/* The tensors of m, in the order of the flat buffer (trained, then state): writes up to
 * max into out and returns how many there are.  An external model has none. */
size_t fl_model_tensors(const fl_model *m, fl_tensor_info *out, size_t max);

/* Writes the ONNX file at path atomically.  mean/std [input_dim] may both be NULL (no
 * transform).  0, FL_EINVAL (an external model) or FL_E* with a message in err. */
int fl_export_onnx(const fl_model *m, const float *params, const float *mean,
                   const float *std, const char *path, char *err, size_t errlen);

/* Writes NAME.npy (little-endian float32, C order) for every tensor of m, and
 * input.mean.npy / input.std.npy when given, into the existing directory dir. */
int fl_export_npy(const fl_model *m, const float *params, const float *mean,
                  const float *std, const char *dir, char *err, size_t errlen);

#endif
