/* The pod sandbox's process for the real-node e2e suite (tpfilter_dev.realnode): what
 * registry.k8s.io/pause does, built here (gcc -static) because there is no registry.
 * It holds the pod's namespaces, reaps orphans and exits on SIGINT/SIGTERM. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(void) {
	struct sigaction term = {.sa_handler = stop}, chld = {.sa_handler = reap};
	sigaction(SIGINT, &term, NULL);
	sigaction(SIGTERM, &term, NULL);
	sigaction(SIGCHLD, &chld, NULL);
	for (;;)
		pause();
}
