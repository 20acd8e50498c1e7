/*
 * The pod sandbox process of the devenv's real node (what upstream calls "pause").
 *
 * containerd starts one per Pod as PID 1 of the Pod's PID and network namespaces: it holds
 * them while the app containers come and go. It does nothing but wait, reap the zombies it
 * inherits (a Pod that shares its PID namespace re-parents orphans to it), and exit 0 on
 * SIGTERM or SIGINT so that stopping a sandbox is quick. No registry is reachable from these
 * machines, so devenv/pause.py compiles this with `gcc -static` and packs it as an OCI image.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void leave(int signum) {
    (void)signum;
    _exit(0);
}

static void reap(int signum) {
    (void)signum;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static int on(int signum, void (*handler)(int), int flags) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    return sigaction(signum, &action, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("kubesandbox-pause");
        return 0;
    }
    if (getpid() != 1) {
        fputs("pause: not PID 1; orphans of this PID namespace are not mine to reap\n", stderr);
    }
    if (on(SIGINT, leave, 0) != 0 || on(SIGTERM, leave, 0) != 0 ||
        on(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART) != 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
