/* The Kubernetes manifests of examples/kubernetes/ through Debian's kubectl (1.20,
 * unpacked into build/tools by make test): `kubectl apply --dry-run=client
 * --validate=false` of the server's PersistentVolumeClaim, Deployment and Service and of
 * the clients' Indexed Job, and of the Secrets secrets.sh makes from test certificates.
 *
 * There is no cluster here.  kubectl still asks an API server which kinds exist
 * (discovery) and whether each object exists already (apply's GET); this test answers
 * both with a fake API server on 127.0.0.1: the discovery documents of the kinds the
 * manifests use, and 404 for every object.  So what is checked is what kubectl checks on
 * the client side: the YAML parses, every object has an apiVersion and kind that the API
 * serves and a name, the documents split correctly, and kubectl builds the objects it
 * would send.  Not checked: the fields against the API's schema (that is --validate,
 * which needs the server's OpenAPI document) and anything a cluster decides (admission,
 * scheduling, images).  A manifest with an unknown kind must fail, so the check can. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

#define VERBS "\"verbs\":[\"create\",\"delete\",\"get\",\"list\",\"patch\",\"update\",\"watch\"]"
#define RES(name, kind, ns) \
  "{\"name\":\"" name "\",\"singularName\":\"\",\"namespaced\":" ns ",\"kind\":\"" kind "\"," VERBS "}"
#define GROUP(g) \
  "{\"name\":\"" g "\",\"versions\":[{\"groupVersion\":\"" g "/v1\",\"version\":\"v1\"}]," \
  "\"preferredVersion\":{\"groupVersion\":\"" g "/v1\",\"version\":\"v1\"}}"

static const struct doc { const char *path, *body; } docs[] = {
    {"/api", "{\"kind\":\"APIVersions\",\"versions\":[\"v1\"],\"serverAddressByClientCIDRs\":"
             "[{\"clientCIDR\":\"0.0.0.0/0\",\"serverAddress\":\"127.0.0.1\"}]}"},
    {"/apis", "{\"kind\":\"APIGroupList\",\"apiVersion\":\"v1\",\"groups\":[" GROUP("apps") ","
              GROUP("batch") "]}"},
    {"/api/v1", "{\"kind\":\"APIResourceList\",\"groupVersion\":\"v1\",\"resources\":["
                RES("services", "Service", "true") "," RES("secrets", "Secret", "true") ","
                RES("persistentvolumeclaims", "PersistentVolumeClaim", "true") ","
                RES("namespaces", "Namespace", "false") "]}"},
    {"/apis/apps/v1", "{\"kind\":\"APIResourceList\",\"apiVersion\":\"v1\",\"groupVersion\":"
                      "\"apps/v1\",\"resources\":[" RES("deployments", "Deployment", "true") "]}"},
    {"/apis/batch/v1", "{\"kind\":\"APIResourceList\",\"apiVersion\":\"v1\",\"groupVersion\":"
                       "\"batch/v1\",\"resources\":[" RES("jobs", "Job", "true") "]}"},
};
static const char not_found[] = "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
                                "\"status\":\"Failure\",\"message\":\"not found\","
                                "\"reason\":\"NotFound\",\"code\":404}";

/* One keep-alive connection: GET requests (a body, if any, is skipped). */
static void *serve_conn(void *arg) {
  int fd = (int)(intptr_t)arg;
  char buf[16384];
  size_t have = 0;
  for (;;) {
    char *end;
    while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
      if (have == sizeof buf) goto done;
      ssize_t n = read(fd, buf + have, sizeof buf - have);
      if (n <= 0) goto done;
      have += (size_t)n;
    }
    size_t head = (size_t)(end + 4 - buf), body = 0;
    char *cl = strcasestr(buf, "\r\nContent-Length:");
    if (cl && cl < end) body = strtoul(cl + 17, NULL, 10);
    char method[16] = "", path[1024] = "";
    sscanf(buf, "%15s %1023s", method, path);
    char *q = strchr(path, '?');
    if (q) *q = 0;
    const char *reply = not_found;
    int code = 404;
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++)
      if (strcmp(method, "GET") == 0 && strcmp(path, docs[i].path) == 0) reply = docs[i].body, code = 200;
    char hdr[256];
    int hl = snprintf(hdr, sizeof hdr, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n", code, code == 200 ? "OK" : "Not Found",
                      strlen(reply));
    if (write(fd, hdr, (size_t)hl) != hl || write(fd, reply, strlen(reply)) < 0) goto done;
    size_t used = head + body < have ? head + body : have;
    body -= used - head; /* what of the body is still to come */
    memmove(buf, buf + used, have - used);
    have -= used;
    while (body > 0) {
      ssize_t n = read(fd, buf, body < sizeof buf ? body : sizeof buf);
      if (n <= 0) goto done;
      body -= (size_t)n;
    }
  }
done:
  close(fd);
  return NULL;
}

static void *serve(void *arg) {
  int lfd = (int)(intptr_t)arg;
  for (;;) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) return NULL;
    pthread_t t;
    if (pthread_create(&t, NULL, serve_conn, (void *)(intptr_t)fd) == 0) pthread_detach(t);
    else close(fd);
  }
}

/* Starts the fake API server; its port. */
static int fake_api_server(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  cr_assert_eq(listen(fd, 16), 0);
  getsockname(fd, (struct sockaddr *)&a, &len);
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, serve, (void *)(intptr_t)fd), 0);
  pthread_detach(t);
  return ntohs(a.sin_port);
}

typedef struct kube {
  char *dir;
  char kubectl[1024], config[700], out[700];
} kube;

static void kube_init(kube *k) {
  const char *kc = getenv("FL_KUBECTL");
  cr_assert(kc && access(kc, X_OK) == 0, "no kubectl (FL_KUBECTL=%s): make test unpacks Debian's "
            "kubernetes-client into build/tools", kc ? kc : "");
  snprintf(k->kubectl, sizeof k->kubectl, "%s", kc);
  k->dir = fl_test_tmpdir();
  snprintf(k->config, sizeof k->config, "%s/kubeconfig", k->dir);
  snprintf(k->out, sizeof k->out, "%s/out.txt", k->dir);
  FILE *f = fopen(k->config, "w");
  cr_assert_not_null(f);
  fprintf(f, "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n"
          "    server: http://127.0.0.1:%d\ncontexts:\n- name: fake\n  context:\n"
          "    cluster: fake\n    user: fake\n    namespace: fl\ncurrent-context: fake\n"
          "users:\n- name: fake\n  user:\n    token: not-a-secret\n", fake_api_server());
  fclose(f);
}

static void kube_free(kube *k) {
  char cmd[800];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", k->dir);
  fl_test_system(cmd);
  free(k->dir);
}

/* Runs a shell command with KUBECTL and KUBECONFIG set; output in k->out. */
static int kube_run(kube *k, const char *fmt, const char *arg) {
  char inner[3000], cmd[8000];
  snprintf(inner, sizeof inner, fmt, arg);
  snprintf(cmd, sizeof cmd, "cd '%s' && export KUBECTL='%s' KUBECONFIG='%s' HOME='%s' && { %s; } >'%s' 2>&1",
           fl_test_src_dir(), k->kubectl, k->config, k->dir, inner, k->out);
  return fl_test_system(cmd);
}

Test(kubernetes, manifests_pass_kubectl_apply_dry_run, .timeout = 120) {
  kube k;
  kube_init(&k);
  int rc = kube_run(&k, "\"$KUBECTL\" apply --dry-run=client --validate=false -f "
                    "examples/kubernetes/server.yaml -f examples/kubernetes/clients.yaml%s", "");
  char *out = fl_test_read_file(k.out, NULL);
  cr_assert_eq(rc, 0, "kubectl apply failed (%d):\n%s", rc, out);
  const char *want[] = {"persistentvolumeclaim/fl-server-state created (dry run)",
                        "deployment.apps/fl-server created (dry run)",
                        "service/fl-server created (dry run)",
                        "job.batch/fl-clients created (dry run)"};
  for (size_t i = 0; i < sizeof want / sizeof *want; i++)
    cr_assert(strstr(out, want[i]), "no '%s' in:\n%s", want[i], out);
  free(out);
  kube_free(&k);
}

Test(kubernetes, secrets_from_certificates, .timeout = 120) {
  kube k;
  kube_init(&k);
  int rc = kube_run(&k, "examples/kubernetes/secrets.sh '%s' | \"$KUBECTL\" apply "
                    "--dry-run=client --validate=false -f -", fl_test_certs_dir());
  char *out = fl_test_read_file(k.out, NULL);
  cr_assert_eq(rc, 0, "secrets.sh | kubectl apply failed (%d):\n%s", rc, out);
  cr_assert(strstr(out, "secret/fl-server-tls created (dry run)"), "%s", out);
  cr_assert(strstr(out, "secret/fl-client-tls created (dry run)"), "%s", out);
  free(out);
  /* What the Secret holds: the CA, and each client's certificate and key. */
  rc = kube_run(&k, "examples/kubernetes/secrets.sh '%s'", fl_test_certs_dir());
  out = fl_test_read_file(k.out, NULL);
  cr_assert_eq(rc, 0, "%s", out);
  cr_assert(strstr(out, "  server.key: ") && strstr(out, "  client-0001.key: ") &&
            strstr(out, "  client-0024.crt: ") && strstr(out, "  ca.crt: "), "%s", out);
  free(out);
  rc = kube_run(&k, "examples/kubernetes/secrets.sh '%s/no-such-dir'", k.dir);
  out = fl_test_read_file(k.out, NULL);
  cr_assert_neq(rc, 0);
  cr_assert(strstr(out, "certs/gen.sh"), "%s", out);
  free(out);
  kube_free(&k);
}

Test(kubernetes, an_unknown_kind_is_refused, .timeout = 120) {
  kube k;
  kube_init(&k);
  char bad[700];
  snprintf(bad, sizeof bad, "%s/bad.yaml", k.dir);
  char cmd[2000];
  snprintf(cmd, sizeof cmd, "sed 's/^kind: Deployment$/kind: Deploymnet/' '%s/examples/kubernetes/server.yaml' > '%s'",
           fl_test_src_dir(), bad);
  cr_assert_eq(fl_test_system(cmd), 0);
  int rc = kube_run(&k, "\"$KUBECTL\" apply --dry-run=client --validate=false -f '%s'", bad);
  char *out = fl_test_read_file(k.out, NULL);
  cr_assert_neq(rc, 0, "kubectl accepted a kind that does not exist:\n%s", out);
  cr_assert(strstr(out, "Deploymnet"), "%s", out);
  free(out);
  kube_free(&k);
}
