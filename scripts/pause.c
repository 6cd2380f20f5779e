/* The sandbox ("pause") process of the benchmark's containerd pods, built
 * by scripts/build-test-image.sh --pause: holds the pod's namespaces, exits
 * on SIGTERM/SIGINT, reaps orphans. Berth itself needs none. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void on_term(int s) { (void)s; _exit(0); }
static void on_chld(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGTERM, on_term); signal(SIGINT, on_term); signal(SIGCHLD, on_chld);
  for (;;) pause();
}
