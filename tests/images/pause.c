/*
 * The pod sandbox's "infra" process for the test images (aver.test/pause:1):
 * it holds the pod's namespaces open by doing nothing at all.
 *
 *   - sleeps in pause() forever;
 *   - exits 0 on SIGINT or SIGTERM (the runtime stopping the sandbox);
 *   - as PID 1 of a pod sharing its PID namespace, reaps every orphan that
 *     is re-parented to it (SIGCHLD), so no zombies accumulate.
 *
 * Built static (gcc -static -Os) so the image needs nothing but this file:
 * see scripts/images.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "aver-pause 1"

static void say(const char *message)
{
	size_t left = strlen(message);
	while (left > 0) {
		ssize_t n = write(STDERR_FILENO, message, left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		message += n;
		left -= (size_t)n;
	}
}

/* Only async-signal-safe calls in handlers: write(2), waitpid(2), _exit(2). */
static void on_shutdown(int signo)
{
	say(signo == SIGTERM ? "pause: SIGTERM, exiting\n"
			     : "pause: SIGINT, exiting\n");
	_exit(0);
}

static void on_child(int signo)
{
	int saved = errno;
	(void)signo;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

static int handle(int signo, void (*handler)(int), int flags)
{
	struct sigaction action;
	memset(&action, 0, sizeof(action));
	action.sa_handler = handler;
	action.sa_flags = flags;
	sigemptyset(&action.sa_mask);
	return sigaction(signo, &action, NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		say(VERSION "\n");
		return 0;
	}
	if (getpid() != 1)
		say("pause: warning: not running as PID 1\n");

	if (handle(SIGINT, on_shutdown, 0) < 0 ||
	    handle(SIGTERM, on_shutdown, 0) < 0 ||
	    handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) < 0) {
		say("pause: cannot install signal handlers\n");
		return 1;
	}

	/* Children may have exited before the SIGCHLD handler was in place. */
	on_child(SIGCHLD);

	for (;;)
		pause();

	say("pause: the infinite loop ended\n");
	return 42;
}
