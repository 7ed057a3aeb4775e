/* The sandbox ("pause") process of every pod on the test node: holds the pod's namespaces
 * until the kubelet stops the pod. Built static (gcc -static) so its one-file image needs
 * no libc. Reaps orphans since it is PID 1 when the pod shares its process namespace. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
  return 0;
}
