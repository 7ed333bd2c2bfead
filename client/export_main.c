/* fl-export: a model file to formats other tools read, ONNX and NumPy .npy (export.h),
 * so a model trained by a federation can be served or inspected elsewhere. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "export.h"
#include "model.h"
#include "modelfile.h"

static const char usage[] =
    "usage: fl-export --model FILE [--onnx FILE] [--npy DIR]\n"
    "Exports a model file (fl-server --out, fl-train --out) for use outside fl.\n"
    "\n"
    "  --model FILE   the model file\n"
    "  --onnx FILE    write an ONNX model (opset 13): input 'input' [N][D] float32 (rows as\n"
    "                 fl-predict reads them), output 'output' [N][C], the values fl-predict\n"
    "                 writes (class probabilities, the probability of class 1, or the\n"
    "                 value); a model file's feature standardisation is part of the graph\n"
    "  --npy DIR      write one NumPy .npy file per tensor into DIR (created if missing),\n"
    "                 named l<I>_<type>.<weight|bias|running_mean|running_var>.npy, and\n"
    "                 input.mean.npy, input.std.npy for a feature standardisation\n"
    "  --list         print the tensors: name, shape\n"
    "  --help         this text\n";

enum { OPT_MODEL = 256, OPT_ONNX, OPT_NPY, OPT_LIST, OPT_HELP };

static const struct option options[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"onnx", required_argument, NULL, OPT_ONNX},
    {"npy", required_argument, NULL, OPT_NPY},
    {"list", no_argument, NULL, OPT_LIST},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

int main(int argc, char **argv) {
  const char *model_path = NULL, *onnx = NULL, *npy = NULL;
  int list = 0, c, rc = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
    switch (c) {
    case OPT_MODEL: model_path = optarg; break;
    case OPT_ONNX: onnx = optarg; break;
    case OPT_NPY: npy = optarg; break;
    case OPT_LIST: list = 1; break;
    case OPT_HELP: fputs(usage, stdout); return 0;
    default: fputs("fl-export: see --help\n", stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "fl-export: unexpected argument '%s' (see --help)\n", argv[optind]);
    return 2;
  }
  if (!model_path || (!onnx && !npy && !list)) {
    fprintf(stderr, "fl-export: %s (see --help)\n",
            model_path ? "nothing to do: give --onnx FILE, --npy DIR or --list"
                       : "--model is required");
    return 2;
  }
  char err[512] = "";
  char *spec = NULL;
  uint64_t id;
  float *params = NULL;
  size_t P;
  fl_transform tf = {0};
  fl_model *m = NULL;
  fl_tensor_info *ti = NULL;
  if (fl_modelfile_load_ex(model_path, &spec, &id, &params, &P, &tf, err, sizeof err) < 0) {
    fprintf(stderr, "fl-export: --model: %s\n", err);
    goto done;
  }
  if (fl_model_create(spec, &m, err, sizeof err) < 0) {
    fprintf(stderr, "fl-export: --model: %s: %s\n", model_path, err);
    goto done;
  }
  if (fl_model_id(m) != id || fl_model_num_params(m) != P ||
      (tf.dim && tf.dim != fl_model_input_dim(m))) {
    fprintf(stderr, "fl-export: --model: %s: its parameters do not match its spec '%s'\n",
            model_path, spec);
    goto done;
  }
  if (list) {
    size_t n = fl_model_tensors(m, NULL, 0);
    if (!(ti = malloc(sizeof *ti * (n ? n : 1)))) goto nomem;
    fl_model_tensors(m, ti, n);
    printf("model %s\n", fl_model_spec(m));
    for (size_t i = 0; i < n; i++) {
      printf("%-32s [", ti[i].name);
      for (int k = 0; k < ti[i].rank; k++) printf("%s%zu", k ? ", " : "", ti[i].shape[k]);
      printf("]\n");
    }
    if (tf.dim) printf("%-32s [%zu]\n%-32s [%zu]\n", "input.mean", tf.dim, "input.std", tf.dim);
  }
  if (onnx) {
    if (fl_export_onnx(m, params, tf.dim ? tf.mean : NULL, tf.dim ? tf.std : NULL, onnx, err,
                       sizeof err) < 0) {
      fprintf(stderr, "fl-export: --onnx: %s\n", err);
      goto done;
    }
    fprintf(stderr, "fl-export: wrote %s (ONNX, opset 13)\n", onnx);
  }
  if (npy) {
    if (mkdir(npy, 0777) != 0 && errno != EEXIST) {
      fprintf(stderr, "fl-export: --npy: %s: cannot create: %s\n", npy, strerror(errno));
      goto done;
    }
    if (fl_export_npy(m, params, tf.dim ? tf.mean : NULL, tf.dim ? tf.std : NULL, npy, err,
                      sizeof err) < 0) {
      fprintf(stderr, "fl-export: --npy: %s\n", err);
      goto done;
    }
    fprintf(stderr, "fl-export: wrote the tensors into %s/\n", npy);
  }
  rc = 0;
  goto done;
nomem:
  fprintf(stderr, "fl-export: %s\n", fl_strerror(FL_ENOMEM));
done:
  free(ti);
  free(params);
  free(spec);
  fl_transform_free(&tf);
  fl_model_free(m);
  return rc;
}
