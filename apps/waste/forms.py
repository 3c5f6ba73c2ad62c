"""Forms of the findings page: filters in the query string and the three actions."""

from __future__ import annotations

import datetime as dt

from django import forms
from django.utils import timezone

from apps.waste.models import Rule, Severity, Status

SNOOZE_CHOICES = [("4", "4 hours"), ("24", "1 day"), ("72", "3 days"), ("168", "1 week")]


class FindingFilterForm(forms.Form):
    rule = forms.ChoiceField(choices=[("", "Any rule"), *Rule.choices], required=False)
    severity = forms.ChoiceField(choices=[("", "Any severity"), *Severity.choices], required=False)
    status = forms.ChoiceField(
        choices=[("active", "Not resolved"), ("", "Any status"), *Status.choices],
        required=False,
    )
    team = forms.SlugField(required=False)


class AcknowledgeForm(forms.Form):
    comment = forms.CharField(
        required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2})
    )


class SnoozeForm(forms.Form):
    hours = forms.ChoiceField(choices=SNOOZE_CHOICES, required=False)
    until = forms.DateTimeField(required=False, help_text="UTC, e.g. 2026-11-30 09:00")

    def until_value(self, *, now: dt.datetime) -> dt.datetime:
        until = self.cleaned_data.get("until")
        if until is not None:
            return until if until.tzinfo else timezone.make_aware(until, dt.UTC)
        return now + dt.timedelta(hours=int(self.cleaned_data.get("hours") or 24))


class ResolveForm(forms.Form):
    comment = forms.CharField(required=False, max_length=2000)
