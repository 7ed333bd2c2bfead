// A federated client in C++: linear regression by hand on std::vector, federated through
// libflclient on the application's own libuv loop.
//
// The client runs with LOOP threading: the library calls fit on the loop thread, and fit
// hands the task to a std::thread and returns FL_CLIENT_PENDING; that thread trains on the
// task's parameters and completes the task with fl_client_task_done, while the loop keeps
// the connection alive.  evaluate is quick and answers on the loop directly.  Each client
// makes its own data: y = w.x + b + noise, the same w and b for every client (from
// --task-seed), x drawn around a per-client offset.  SIGINT stops the client
// (fl_client_stop, from the loop's signal handler).
//
//   fl-server --model external:linreg10:11 --fed-eval-every 1 ...
//   linreg --server HOST:PORT --ca ca.crt --cert client-0001.crt --key client-0001.key
//          [--server-name NAME] [--seed N] [--samples N] [--features D]
//
// Build: g++ -std=c++11 $(pkg-config --cflags flclient libuv) -o linreg linreg.cpp
//            $(pkg-config --libs flclient libuv) -lpthread
#include <fl/client.h>
#include <uv.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <csignal>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Data {
  int n = 0, d = 0;
  std::vector<float> x;  // [n][d]
  std::vector<float> y;  // [n]
};

// Parameters: w[0..d) then the bias, as the federation's flat array.
double mse(const float *p, const Data &ds) {
  double sum = 0;
  for (int i = 0; i < ds.n; i++) {
    double e = p[ds.d] - ds.y[i];
    for (int j = 0; j < ds.d; j++) e += double(p[j]) * ds.x[size_t(i) * ds.d + j];
    sum += e * e;
  }
  return ds.n ? sum / ds.n : 0;
}

void sgd(float *p, const Data &ds, const fl_client_fit_config &cfg, const fl_client_task *task) {
  const int epochs = cfg.epochs ? int(cfg.epochs) : 1;
  const int batch = cfg.batch_size ? int(cfg.batch_size) : 16;
  const double lr = cfg.lr > 0 ? cfg.lr : 0.05;
  std::mt19937_64 rng(cfg.seed + 17);
  std::vector<int> order(size_t(ds.n));
  for (int i = 0; i < ds.n; i++) order[size_t(i)] = i;
  std::vector<double> g(size_t(ds.d) + 1);
  for (int e = 0; e < epochs && !fl_client_task_cancelled(task); e++) {
    std::shuffle(order.begin(), order.end(), rng);
    for (int start = 0; start < ds.n; start += batch) {
      const int end = std::min(start + batch, ds.n);
      std::fill(g.begin(), g.end(), 0.0);
      for (int k = start; k < end; k++) {
        const float *x = &ds.x[size_t(order[size_t(k)]) * ds.d];
        double err = p[ds.d] - ds.y[size_t(order[size_t(k)])];
        for (int j = 0; j < ds.d; j++) err += double(p[j]) * x[j];
        for (int j = 0; j < ds.d; j++) g[size_t(j)] += err * x[j];
        g[size_t(ds.d)] += err;
      }
      for (int j = 0; j <= ds.d; j++) p[j] -= float(lr * 2 * g[size_t(j)] / (end - start));
    }
  }
}

struct App {
  fl_client *client = nullptr;
  uv_signal_t sigint;
  Data train, test;
  std::vector<std::thread> trainers;  // touched on the loop thread only; joined at the end
  int status = 0;
};

void make_data(App &app, int n, int d, unsigned long long seed, unsigned long long task_seed) {
  std::mt19937_64 task(task_seed), own(seed * 7919 + 1);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> w(static_cast<size_t>(d) + 1), shift(static_cast<size_t>(d));
  for (double &v : w) v = normal(task);
  for (double &v : shift) v = 0.5 * normal(own);
  Data *sets[2] = {&app.train, &app.test};
  const int sizes[2] = {n - n / 5, n / 5};
  for (int k = 0; k < 2; k++) {
    Data &ds = *sets[k];
    ds.n = sizes[k];
    ds.d = d;
    ds.x.resize(size_t(ds.n) * d);
    ds.y.resize(size_t(ds.n));
    for (int i = 0; i < ds.n; i++) {
      double y = w[size_t(d)] + 0.1 * normal(own);
      for (int j = 0; j < d; j++) {
        const double v = shift[size_t(j)] + normal(own);
        ds.x[size_t(i) * d + j] = float(v);
        y += w[size_t(j)] * v;
      }
      ds.y[size_t(i)] = float(y);
    }
  }
}

// ---- the library's callbacks ----

int fit(fl_client *c, fl_client_task *task) {
  App *app = static_cast<App *>(fl_client_get_data(c));
  app->trainers.emplace_back([app, task] {
    float *p = fl_client_task_params(task);  // the global model: train it in place
    sgd(p, app->train, *fl_client_task_config(task), task);
    fl_client_metrics *m = fl_client_task_metrics(task);
    m->num_examples = uint64_t(app->train.n);
    m->loss = mse(p, app->train);
    int status = 0;
    if (!std::isfinite(m->loss))
      status = fl_client_task_error(task, FL_CLIENT_ECALLBACK, "the loss diverged");
    fl_client_task_done(task, status);  // from this thread: the task is the library's again
  });
  return FL_CLIENT_PENDING;
}

int evaluate(fl_client *c, fl_client_task *task) {
  App *app = static_cast<App *>(fl_client_get_data(c));
  fl_client_metrics *m = fl_client_task_metrics(task);
  m->num_examples = uint64_t(app->test.n);
  m->loss = mse(fl_client_task_params(task), app->test);
  return 0;
}

// Initial parameters, should the server ask (an external model without --init-model).
int initial_params(fl_client *, float *params, uint64_t n) {
  std::fill(params, params + n, 0.0f);
  return 0;
}

void log_line(fl_client *c, int level, const char *msg) {
  static const char *const names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  std::fprintf(stderr, "%-5s [%s] %s\n", names[level < 0 ? 0 : level > 3 ? 3 : level],
               fl_client_name(c), msg);
}

void finished(fl_client *c, int status) {
  App *app = static_cast<App *>(fl_client_get_data(c));
  app->status = status;
  uv_close(reinterpret_cast<uv_handle_t *>(&app->sigint), nullptr);  // the loop may end
}

void on_sigint(uv_signal_t *h, int) {
  std::fprintf(stderr, "linreg: SIGINT: stopping\n");
  fl_client_stop(static_cast<App *>(h->data)->client);
}

void usage() {
  std::fprintf(stderr,
               "usage: linreg --server HOST:PORT --ca FILE --cert FILE --key FILE\n"
               "              [--server-name NAME] [--name NAME] [--seed N] [--samples N] "
               "[--features D] [--task-seed N]\n");
}

}  // namespace

int main(int argc, char **argv) {
  std::string server, ca, cert, key, server_name, name = "linreg";
  unsigned long long seed = 1, task_seed = 7;
  int samples = 1000, d = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--server") server = v;
    else if (a == "--ca") ca = v;
    else if (a == "--cert") cert = v;
    else if (a == "--key") key = v;
    else if (a == "--server-name") server_name = v;
    else if (a == "--name") name = v;
    else if (a == "--seed") seed = std::strtoull(v.c_str(), nullptr, 10);
    else if (a == "--task-seed") task_seed = std::strtoull(v.c_str(), nullptr, 10);
    else if (a == "--samples") samples = std::atoi(v.c_str());
    else if (a == "--features") d = std::atoi(v.c_str());
    else { usage(); return 2; }
  }
  if (argc % 2 == 0 || server.empty() || ca.empty() || cert.empty() || key.empty() ||
      samples < 5 || d < 1) {
    usage();
    return 2;
  }
  App app;
  make_data(app, samples, d, seed, task_seed);

  uv_loop_t loop;
  uv_loop_init(&loop);
  int rc = fl_client_new(&app.client);
  if (rc) {
    std::fprintf(stderr, "linreg: %s\n", fl_client_strerror(rc));
    return 1;
  }
  fl_client *c = app.client;
  const std::string model = "linreg" + std::to_string(d);
  fl_client_set_data(c, &app);
  if ((rc = fl_client_set_server(c, server.c_str())) != 0 ||
      (rc = fl_client_set_tls(c, ca.c_str(), cert.c_str(), key.c_str(),
                              server_name.empty() ? nullptr : server_name.c_str())) != 0 ||
      (rc = fl_client_set_name(c, name.c_str())) != 0 ||
      (rc = fl_client_set_model(c, model.c_str(), uint64_t(d) + 1)) != 0 ||
      (rc = fl_client_set_num_examples(c, uint64_t(app.train.n))) != 0 ||
      (rc = fl_client_set_threading(c, FL_CLIENT_THREAD_LOOP)) != 0 ||
      (rc = fl_client_on_fit(c, fit)) != 0 || (rc = fl_client_on_evaluate(c, evaluate)) != 0 ||
      (rc = fl_client_on_params(c, initial_params, nullptr)) != 0 ||
      (rc = fl_client_on_log(c, log_line, FL_CLIENT_LOG_INFO)) != 0 ||
      (rc = fl_client_on_finish(c, finished)) != 0 || (rc = fl_client_start(c, &loop)) != 0) {
    std::fprintf(stderr, "linreg: %s\n", fl_client_errmsg(c));
    fl_client_free(c);
    return 1;
  }
  uv_signal_init(&loop, &app.sigint);
  app.sigint.data = &app;
  uv_signal_start(&app.sigint, on_sigint, SIGINT);
  std::fprintf(stderr, "linreg: %d training and %d test examples, model external:%s:%d\n",
               app.train.n, app.test.n, model.c_str(), d + 1);

  uv_run(&loop, UV_RUN_DEFAULT);  // until the client has finished

  for (std::thread &t : app.trainers) t.join();
  if (app.status)
    std::fprintf(stderr, "linreg: %s: %s\n", fl_client_err_name(app.status), fl_client_errmsg(c));
  else
    std::fprintf(stderr, "linreg: training is done\n");
  fl_client_free(c);
  uv_loop_close(&loop);
  return app.status ? 1 : 0;
}
