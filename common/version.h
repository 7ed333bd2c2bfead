/* The fl software version, reported in Hello and Welcome messages and by --version. */
#ifndef FL_VERSION_H
#define FL_VERSION_H
#define FL_VERSION "0.1.0"
#endif
